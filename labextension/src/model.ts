/**
 * The panel's model: the kernel's connections, the object-browser tree and pending requests.
 *
 * It knows nothing about JupyterLab: messages come in through `handleMessage`, go out through
 * an `IChannel`, and every change is announced on `changed`. That keeps it testable with jest
 * and a fake channel. See protocol.ts for the wire format.
 */

import {
  Action,
  IChannel,
  IChildInfo,
  IConnectionFile,
  IConnectionInfo,
  IDiscovery,
  IGroupInfo,
  IObjectInfo,
  IRequestMessage,
  KernelMessage,
  PathStep
} from './protocol';

/** A minimal signal so the model has no runtime dependency (lumino's is ESM-only in jest). */
export class Emitter<T> {
  private _listeners = new Set<(value: T) => void>();

  connect(fn: (value: T) => void): void {
    this._listeners.add(fn);
  }

  disconnect(fn: (value: T) => void): void {
    this._listeners.delete(fn);
  }

  emit(value: T): void {
    for (const fn of Array.from(this._listeners)) {
      fn(value);
    }
  }
}

/** An error the kernel reported for a request, or a timeout. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly errorType: string = 'Error'
  ) {
    super(message);
  }
}

/** One node of the object browser: the root of a connection (path []) or a child. */
export interface ITreeNode {
  path: PathStep[];
  expanded: boolean;
  loading: boolean;
  children: IChildInfo[] | null;
  error: string | null;
}

interface IPending {
  resolve: (value: any) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export interface IModelOptions {
  /** Milliseconds before a request without a reply fails (default 30 s). */
  requestTimeout?: number;
  /** Children fetched per expansion (default 200). */
  childLimit?: number;
}

export class RemoteModel {
  readonly changed = new Emitter<void>();
  connections: IConnectionInfo[] = [];
  groups: IGroupInfo[] = [];
  current: string | null = null;
  /** Whether a kernel-side endpoint is attached (the IPython extension is loaded). */
  attached = false;
  /** The last request error, shown in the panel until the next action. */
  lastError: string | null = null;
  /**
   * Whether the kernel runs a cell. Periodic pings pause meanwhile: they would only queue
   * behind the cell on the shell channel (the kernel answers comm messages between cells).
   */
  kernelBusy = false;

  private _channel: IChannel | null = null;
  private _nextId = 1;
  private _pending = new Map<number, IPending>();
  private _pinging = new Set<string>();
  private _trees = new Map<string, Map<string, ITreeNode>>();
  private _timer: ReturnType<typeof setInterval> | null = null;
  private _tick: ReturnType<typeof setInterval> | null = null;
  /** Date.now() when the last snapshot arrived (its `since` values count from then). */
  snapshotAt = Date.now();
  private _requestTimeout: number;
  private _childLimit: number;

  constructor(options: IModelOptions = {}) {
    this._requestTimeout = options.requestTimeout ?? 30000;
    this._childLimit = options.childLimit ?? 200;
  }

  /** Attach a channel (a comm) or detach with null; detaching fails pending requests. */
  setChannel(channel: IChannel | null): void {
    this._channel = channel;
    this.attached = channel !== null;
    if (!channel) {
      this._failAll('the kernel side of the panel went away');
      this._pinging.clear();
    }
    this.changed.emit();
  }

  get channel(): IChannel | null {
    return this._channel;
  }

  get(name: string): IConnectionInfo | undefined {
    return this.connections.find(c => c.name === name);
  }

  /** The connection the status bar shows: the current one, else the first. */
  get shown(): IConnectionInfo | undefined {
    return (this.current && this.get(this.current)) || this.connections[0];
  }

  handleMessage(message: KernelMessage): void {
    if (message.type === 'snapshot') {
      this.groups = message.groups ?? [];
      this._applySnapshot(message.connections, message.current);
    } else if (message.type === 'reply') {
      const pending = this._pending.get(message.id);
      if (!pending) {
        return;
      }
      this._pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.ok) {
        pending.resolve(message.result);
      } else {
        pending.reject(
          new RequestError(message.error ?? 'request failed', message.error_type)
        );
      }
    }
  }

  /** Send one request; the promise settles with the reply or fails after the timeout. */
  request(action: Action, args: Record<string, any> = {}, timeout?: number): Promise<any> {
    const channel = this._channel;
    if (!channel) {
      return Promise.reject(
        new RequestError('run %load_ext remote_kernel in the notebook first', 'NotAttached')
      );
    }
    const id = this._nextId++;
    const message: IRequestMessage = { type: 'request', id, action, args };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError(`${action}: no answer from the kernel`, 'Timeout'));
      }, timeout ?? this._requestTimeout);
      this._pending.set(id, { resolve, reject, timer });
      try {
        channel.send(message);
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(error as Error);
      }
    });
  }

  get pendingCount(): number {
    return this._pending.size;
  }

  // Actions ---------------------------------------------------------------------------------

  connect(target: string, tokenFile?: string, name?: string): Promise<string> {
    const args: Record<string, any> = { target };
    if (tokenFile) {
      args.token_file = tokenFile;
    }
    if (name) {
      args.name = name;
    }
    return this._act('connect', args).then(result => result.name as string);
  }

  disconnect(name: string): Promise<void> {
    return this._act('disconnect', { name });
  }

  reconnect(name: string): Promise<void> {
    this._dropTree(name);
    return this._act('reconnect', { name });
  }

  files(): Promise<IConnectionFile[]> {
    return this.request('files').then(result => result.files as IConnectionFile[]);
  }

  /** Servers advertised on the local network (the kernel listens for `timeout` s). */
  discover(timeout?: number): Promise<IDiscovery> {
    const args: Record<string, any> = {};
    if (timeout !== undefined) {
      args.timeout = timeout;
    }
    return this.request('discover', args).then(result => ({
      available: !!result.available,
      servers: (result.servers ?? []) as IDiscovery['servers']
    }));
  }

  /** The groups a connection belongs to. */
  groupsOf(name: string): string[] {
    return this.groups.filter(g => g.members.includes(name)).map(g => g.name);
  }

  /**
   * Ping one connection unless a ping for it is already outstanding (then resolves null).
   * The latency lands in the model; a failure leaves the state to the kernel's snapshot.
   */
  ping(name: string): Promise<number | null> {
    if (this._pinging.has(name)) {
      return Promise.resolve(null);
    }
    this._pinging.add(name);
    return this.request('ping', { name })
      .then(result => {
        const latency = result.latency as number;
        const info = this.get(name);
        if (info) {
          info.latency = latency;
          this.changed.emit();
        }
        return latency;
      })
      .finally(() => {
        this._pinging.delete(name);
      });
  }

  /** Ping every connected connection (what the periodic timer does). */
  pingAll(): void {
    if (this.kernelBusy) {
      return;
    }
    for (const info of this.connections) {
      if (info.state === 'open') {
        this.ping(info.name).catch(() => undefined);
      }
    }
  }

  /** Ping every `interval` ms until `stopPinging`; the panel calls this while visible. */
  startPinging(interval: number): void {
    this.stopPinging();
    this.pingAll();
    this._timer = setInterval(() => this.pingAll(), interval);
  }

  stopPinging(): void {
    if (this._timer !== null) {
      clearInterval(this._timer);
      this._timer = null;
    }
  }

  get isPinging(): boolean {
    return this._timer !== null;
  }

  // The object browser -----------------------------------------------------------------------

  /** The node at `path`, created collapsed when first asked for. */
  node(name: string, path: PathStep[]): ITreeNode {
    let tree = this._trees.get(name);
    if (!tree) {
      tree = new Map();
      this._trees.set(name, tree);
    }
    const key = pathKey(path);
    let node = tree.get(key);
    if (!node) {
      node = { path, expanded: false, loading: false, children: null, error: null };
      tree.set(key, node);
    }
    return node;
  }

  /** Expand a node: one `children` request the first time, none after. */
  async expand(name: string, path: PathStep[]): Promise<void> {
    const node = this.node(name, path);
    node.expanded = true;
    if (node.children !== null || node.loading) {
      this.changed.emit();
      return;
    }
    node.loading = true;
    node.error = null;
    this.changed.emit();
    try {
      const result = await this.request('children', {
        name,
        path,
        limit: this._childLimit
      });
      node.children = result.children as IChildInfo[];
    } catch (error) {
      node.error = (error as Error).message;
    } finally {
      node.loading = false;
      this.changed.emit();
    }
  }

  collapse(name: string, path: PathStep[]): void {
    this.node(name, path).expanded = false;
    this.changed.emit();
  }

  toggle(name: string, path: PathStep[]): Promise<void> {
    const node = this.node(name, path);
    if (node.expanded) {
      this.collapse(name, path);
      return Promise.resolve();
    }
    return this.expand(name, path);
  }

  /** Forget the loaded children of a connection (collapsed, fetched again on expand). */
  refresh(name: string): void {
    this._dropTree(name);
    this.changed.emit();
  }

  inspect(name: string, path: PathStep[]): Promise<IObjectInfo> {
    return this.request('inspect', { name, path }).then(result => result.info as IObjectInfo);
  }

  /** Python code that reaches the node at `path` of connection `name`. */
  codeFor(name: string, path: PathStep[]): string {
    const info = this.get(name);
    return pathCode(info?.code_root ?? name, path);
  }

  /** How long `info` has been in its state, in seconds, as of now. */
  secondsInState(info: IConnectionInfo): number | null {
    if (info.since === null || info.since === undefined) {
      return null;
    }
    return info.since + (Date.now() - this.snapshotAt) / 1000;
  }

  /** While a connection is unreachable or resuming, views refresh its "for N s" each second. */
  private _tickWhileWaiting(): void {
    const waiting = this.connections.some(c => c.state === 'unreachable' || c.state === 'resuming');
    if (waiting && this._tick === null) {
      this._tick = setInterval(() => this.changed.emit(), 1000);
    } else if (!waiting && this._tick !== null) {
      clearInterval(this._tick);
      this._tick = null;
    }
  }

  dispose(): void {
    if (this._tick !== null) {
      clearInterval(this._tick);
      this._tick = null;
    }
    this.stopPinging();
    this._failAll('the panel was closed');
  }

  // Internals -------------------------------------------------------------------------------

  private _act(action: Action, args: Record<string, any>): Promise<any> {
    this.lastError = null;
    return this.request(action, args).catch(error => {
      this.lastError = (error as Error).message;
      this.changed.emit();
      throw error;
    });
  }

  private _applySnapshot(connections: IConnectionInfo[], current: string | null): void {
    const previous = new Map(this.connections.map(c => [c.name, c]));
    for (const info of connections) {
      const before = previous.get(info.name);
      // A new session (a reconnect, or a new connection under an old name) has new
      // objects; a session that resumed after being unreachable keeps them.
      if (
        before &&
        (before.target !== info.target || (before.state === 'closed' && info.state === 'open'))
      ) {
        this._dropTree(info.name);
      }
      if (info.latency === null && before && before.latency !== null && info.state === 'open') {
        info.latency = before.latency;
      }
      previous.delete(info.name);
    }
    for (const gone of previous.keys()) {
      this._dropTree(gone);
    }
    const before = new Map(this.connections.map(c => [c.name, c.state]));
    this.connections = connections;
    this.current = current;
    this.snapshotAt = Date.now();
    this._tickWhileWaiting();
    this.changed.emit();
    // While the panel pings, a connection that just (re)appeared gets its latency at once.
    if (this.isPinging) {
      for (const info of connections) {
        if (info.state === 'open' && before.get(info.name) !== 'open') {
          this.ping(info.name).catch(() => undefined);
        }
      }
    }
  }

  private _dropTree(name: string): void {
    this._trees.delete(name);
  }

  private _failAll(reason: string): void {
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new RequestError(reason, 'Detached'));
      this._pending.delete(id);
    }
  }
}

/** A stable key for a path (used for the tree's node map and DOM ids). */
export function pathKey(path: PathStep[]): string {
  return JSON.stringify(path);
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const KEYWORDS = new Set(
  (
    'False None True and as assert async await break class continue def del elif else ' +
    'except finally for from global if import in is lambda nonlocal not or pass raise ' +
    'return try while with yield'
  ).split(' ')
);

export function isIdentifier(name: string): boolean {
  return IDENTIFIER.test(name) && !KEYWORDS.has(name);
}

/** A Python literal for a mapping key or index. */
export function pyLiteral(key: string | number | boolean): string {
  if (typeof key === 'boolean') {
    return key ? 'True' : 'False';
  }
  if (typeof key === 'number') {
    return Number.isFinite(key) ? String(key) : `float(${JSON.stringify(String(key))})`;
  }
  return JSON.stringify(key);
}

/** Python code for a path below `root`. */
export function pathCode(root: string, path: PathStep[]): string {
  let code = root;
  path.forEach(([kind, key]) => {
    if (kind === 'attr') {
      code += `.${key}`;
    } else {
      code += `[${pyLiteral(key)}]`;
    }
  });
  return code;
}

/** "0.8 ms", "12 ms", "1.3 s", or "–" when unknown. */
/** A connection's state as a user reads it: "unreachable for 12 s" while it lasts. */
export function stateText(model: RemoteModel, info: IConnectionInfo): string {
  const waited = model.secondsInState(info);
  if ((info.state === 'unreachable' || info.state === 'resuming') && waited !== null) {
    return `${info.state} for ${Math.round(waited)} s`;
  }
  return info.state;
}

export function formatLatency(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '–';
  }
  const ms = seconds * 1000;
  if (ms < 10) {
    return `${ms.toFixed(1)} ms`;
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  return `${(ms / 1000).toFixed(1)} s`;
}

/** "512 B", "3.4 kB", "12 MB". */
export function formatBytes(count: number | null | undefined): string {
  if (count === null || count === undefined || !Number.isFinite(count)) {
    return '–';
  }
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** Shorten a repr for one tree row. */
export function shorten(text: string, max = 60): string {
  const oneLine = text.replace(/\s+/g, ' ');
  return oneLine.length <= max ? oneLine : `${oneLine.slice(0, max - 1)}…`;
}
