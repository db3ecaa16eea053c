/**
 * The comm protocol between this extension and `remote_kernel/comm.py`.
 *
 * Target name: `remote_kernel.panel` (registered on both sides).
 *
 * - The kernel opens a comm to the frontend when `%load_ext remote_kernel` runs; the open
 *   message carries a snapshot. The frontend also tries to open a comm to the kernel once per
 *   kernel connection (a page reload on a kernel that already loaded the extension); a kernel
 *   without the extension just closes it.
 * - Kernel -> frontend: `snapshot` (the whole connection list, sent after every change and every
 *   action) and `reply` (the answer to one request, matched by `id`).
 * - Frontend -> kernel: `request` with an `action` and `args`. The kernel never waits for the
 *   frontend: comm messages are handled on the shell channel between cells, so a request sent
 *   while a cell runs is answered after it; the frontend puts a timeout on every request and
 *   never sends a second ping for a connection while one is outstanding.
 *
 * Paths in the object browser are lists of `[kind, key]` steps, kind `attr` or `item`; the
 * kernel turns them into tuples for the one `CHILDREN` request per expansion.
 */

/** The comm target name, identical on the kernel side (comm.py `TARGET`). */
export const TARGET = 'remote_kernel.panel';

/** The protocol version both sides announce in snapshots. */
export const PROTOCOL_VERSION = 1;

/**
 * One vocabulary with the kernel's `Connection.state` and `%remote list`: "open";
 * "unreachable" (the link went silent; the session is kept and resumes when it returns);
 * "resuming" (the resume handshake runs on a new link); "closed".
 */
export type ConnectionState = 'open' | 'unreachable' | 'resuming' | 'closed';

export interface IStats {
  requests: number;
  bytes_in: number;
  bytes_out: number;
}

/** One connection of the kernel's registry, as the snapshot describes it. */
export interface IConnectionInfo {
  name: string;
  target: string;
  state: ConnectionState;
  /** Why a connection closed ("" while it is not closed). */
  error?: string;
  /** Seconds in this state when the snapshot was taken (null: not known). */
  since?: number | null;
  /** Seconds of the last ping, or null before the first one. */
  latency: number | null;
  stats: IStats;
  /** Python code that reaches the browser root, e.g. `pi.namespace`. */
  code_root: string;
  /** The user trusts this connection's output: it is shown unfiltered (`--trust`). */
  trusted?: boolean;
  /** "namespace" for classic connections, "root" otherwise. */
  root_label: string;
  /** The notebook cell running on this connection (a `%%remote` cell), if any. */
  running?: IRunningCell | null;
}

/** A cell running on a connection: its execution count and first line. */
export interface IRunningCell {
  count: number | null;
  code: string;
}

/** A named group of connections (`%remote group NAME a b c`). */
export interface IGroupInfo {
  name: string;
  members: string[];
}

export interface ISnapshotMessage {
  type: 'snapshot';
  version: number;
  current: string | null;
  connections: IConnectionInfo[];
  /** Named groups; absent from kernels that predate them. */
  groups?: IGroupInfo[];
}

export interface IReplyMessage {
  type: 'reply';
  id: number;
  ok: boolean;
  result?: any;
  error?: string;
  error_type?: string;
}

export type KernelMessage = ISnapshotMessage | IReplyMessage;

export type PathStep = [kind: 'attr' | 'item', key: string | number | boolean];

export type Action =
  | 'snapshot'
  | 'files'
  | 'discover'
  | 'connect'
  | 'disconnect'
  | 'reconnect'
  | 'ping'
  | 'children'
  | 'inspect';

export interface IRequestMessage {
  type: 'request';
  id: number;
  action: Action;
  args: Record<string, any>;
}

/** One child in the object browser, as `describe.children` reports it. */
export interface IChildInfo {
  name: string;
  kind: 'attr' | 'item';
  key: string | number | boolean;
  type: string;
  repr: string;
  expandable: boolean;
}

/** A live connection file offered by the connect dialog. */
export interface IConnectionFile {
  name: string;
  host?: string;
  port?: number;
  file?: string;
  service?: string;
  [key: string]: any;
}

/** A server advertised on the local network (DNS-SD); never a token. */
export interface IDiscoveredServer {
  name: string;
  host: string;
  port: number;
  tls: boolean;
  service: string;
}

/** The answer to `discover`: `available` is false where the kernel has no zeroconf. */
export interface IDiscovery {
  available: boolean;
  servers: IDiscoveredServer[];
}

/** The documentation of a node (the OINFO request). */
export interface IObjectInfo {
  type_name: string;
  type_qualname: string;
  name: string;
  string_form: string;
  docstring: string;
  signature: string;
  file: string;
  [key: string]: any;
}

/** The transport the model talks through: a kernel comm in the app, a fake in tests. */
export interface IChannel {
  send(message: IRequestMessage): void;
}
