import {
  formatBytes,
  formatLatency,
  isIdentifier,
  pathCode,
  pyLiteral,
  RemoteModel,
  shorten,
  stateText
} from '../model';
import { IChannel, IConnectionInfo, IRequestMessage, ISnapshotMessage } from '../protocol';

/** A channel that records requests; the test answers them like the kernel would. */
class FakeChannel implements IChannel {
  sent: IRequestMessage[] = [];
  send(message: IRequestMessage): void {
    this.sent.push(message);
  }
  last(action?: string): IRequestMessage {
    const found = this.sent.filter(m => !action || m.action === action);
    return found[found.length - 1];
  }
}

function info(name: string, extra: Partial<IConnectionInfo> = {}): IConnectionInfo {
  return {
    name,
    target: '127.0.0.1:4000',
    state: 'open',
    latency: null,
    stats: { requests: 1, bytes_in: 10, bytes_out: 20 },
    code_root: `${name}.namespace`,
    root_label: 'namespace',
    ...extra
  };
}

function snapshot(connections: IConnectionInfo[], current: string | null = null): ISnapshotMessage {
  return { type: 'snapshot', version: 1, current, connections };
}

function setup(options = {}) {
  const model = new RemoteModel(options);
  const channel = new FakeChannel();
  model.setChannel(channel);
  let changes = 0;
  model.changed.connect(() => changes++);
  return { model, channel, changes: () => changes };
}

const flush = () => new Promise(resolve => setTimeout(resolve, 0));

describe('RemoteModel', () => {
  afterEach(() => jest.useRealTimers());

  it('applies snapshots and announces the change', () => {
    const { model, changes } = setup();
    model.handleMessage(snapshot([info('pi'), info('gpu')], 'gpu'));
    expect(model.connections.map(c => c.name)).toEqual(['pi', 'gpu']);
    expect(model.current).toBe('gpu');
    expect(model.shown?.name).toBe('gpu');
    expect(changes()).toBe(1);
  });

  it('matches replies to requests by id', async () => {
    const { model, channel } = setup();
    const first = model.request('files');
    const second = model.request('files');
    const [a, b] = channel.sent;
    expect(a.id).not.toBe(b.id);
    model.handleMessage({ type: 'reply', id: b.id, ok: true, result: { files: ['b'] } });
    model.handleMessage({ type: 'reply', id: a.id, ok: true, result: { files: ['a'] } });
    await expect(first).resolves.toEqual({ files: ['a'] });
    await expect(second).resolves.toEqual({ files: ['b'] });
    expect(model.pendingCount).toBe(0);
  });

  it('turns error replies into RequestErrors and keeps the message', async () => {
    const { model, channel } = setup();
    const done = model.connect('nowhere:1');
    model.handleMessage({
      type: 'reply',
      id: channel.last().id,
      ok: false,
      error: 'Connection refused',
      error_type: 'ConnectionRefusedError'
    });
    await expect(done).rejects.toMatchObject({
      message: 'Connection refused',
      errorType: 'ConnectionRefusedError'
    });
    expect(model.lastError).toBe('Connection refused');
  });

  it('sends connect with only the fields given', () => {
    const { model, channel } = setup();
    void model.connect('lab', '/tmp/token').catch(() => undefined);
    expect(channel.last()).toMatchObject({
      type: 'request',
      action: 'connect',
      args: { target: 'lab', token_file: '/tmp/token' }
    });
    expect(channel.last().args.name).toBeUndefined();
  });

  it('fails a request that gets no answer in time', async () => {
    jest.useFakeTimers();
    const { model } = setup({ requestTimeout: 1000 });
    const done = model.request('ping', { name: 'pi' });
    jest.advanceTimersByTime(1001);
    await expect(done).rejects.toMatchObject({ errorType: 'Timeout' });
    expect(model.pendingCount).toBe(0);
  });

  it('fails pending requests when the kernel side goes away', async () => {
    const { model } = setup();
    const done = model.request('files');
    model.setChannel(null);
    expect(model.attached).toBe(false);
    await expect(done).rejects.toMatchObject({ errorType: 'Detached' });
    await expect(model.request('files')).rejects.toMatchObject({ errorType: 'NotAttached' });
  });

  it('never has two pings of one connection in flight and records the latency', async () => {
    const { model, channel } = setup();
    model.handleMessage(snapshot([info('pi')]));
    const first = model.ping('pi');
    await expect(model.ping('pi')).resolves.toBeNull();
    expect(channel.sent.filter(m => m.action === 'ping')).toHaveLength(1);
    model.handleMessage({ type: 'reply', id: channel.last().id, ok: true, result: { latency: 0.004 } });
    await expect(first).resolves.toBe(0.004);
    expect(model.get('pi')?.latency).toBe(0.004);
    void model.ping('pi');
    expect(channel.sent.filter(m => m.action === 'ping')).toHaveLength(2);
  });

  it('pings connected connections periodically until stopped', async () => {
    jest.useFakeTimers();
    const { model, channel } = setup();
    model.handleMessage(snapshot([info('pi'), info('old', { state: 'closed' })]));
    model.startPinging(5000);
    const pings = () => channel.sent.filter(m => m.action === 'ping');
    expect(pings().map(m => m.args.name)).toEqual(['pi']);
    model.handleMessage({ type: 'reply', id: pings()[0].id, ok: true, result: { latency: 0.001 } });
    for (let i = 0; i < 5; i++) {
      await Promise.resolve(); // let the reply settle the first ping
    }
    jest.advanceTimersByTime(5000);
    expect(pings()).toHaveLength(2);
    model.stopPinging();
    jest.advanceTimersByTime(20000);
    expect(pings()).toHaveLength(2);
    expect(model.isPinging).toBe(false);
    model.dispose();
  });

  it('skips periodic pings while the kernel runs a cell', () => {
    const { model, channel } = setup();
    model.handleMessage(snapshot([info('pi')]));
    model.kernelBusy = true;
    model.pingAll();
    expect(channel.sent).toHaveLength(0);
    model.kernelBusy = false;
    model.pingAll();
    expect(channel.sent.map(m => m.action)).toEqual(['ping']);
  });

  it('pings a connection as soon as it appears while pinging', () => {
    jest.useFakeTimers();
    const { model, channel } = setup();
    model.startPinging(60000);
    expect(channel.sent).toHaveLength(0);
    model.handleMessage(snapshot([info('pi')]));
    expect(channel.sent.map(m => [m.action, m.args.name])).toEqual([['ping', 'pi']]);
    model.dispose();
  });

  it('keeps the last latency when a snapshot does not carry one', () => {
    const { model } = setup();
    model.handleMessage(snapshot([info('pi', { latency: 0.003 })]));
    model.handleMessage(snapshot([info('pi')]));
    expect(model.get('pi')?.latency).toBe(0.003);
  });

  it('expands a node with one children request and caches it', async () => {
    const { model, channel } = setup({ childLimit: 50 });
    model.handleMessage(snapshot([info('pi')]));
    const expanding = model.expand('pi', []);
    expect(model.node('pi', []).loading).toBe(true);
    const request = channel.last('children');
    expect(request.args).toEqual({ name: 'pi', path: [], limit: 50 });
    const children = [
      { name: 'd', kind: 'item', key: 'd', type: 'dict', repr: "{'a': 1}", expandable: true }
    ];
    model.handleMessage({ type: 'reply', id: request.id, ok: true, result: { children } });
    await expanding;
    expect(model.node('pi', []).children).toEqual(children);
    model.collapse('pi', []);
    await model.toggle('pi', []);
    expect(model.node('pi', []).expanded).toBe(true);
    expect(channel.sent.filter(m => m.action === 'children')).toHaveLength(1);

    void model.expand('pi', [['item', 'd']]);
    expect(channel.last('children').args.path).toEqual([['item', 'd']]);
  });

  it('shows an expansion error on the node', async () => {
    const { model, channel } = setup();
    const expanding = model.expand('pi', [['attr', 'x']]);
    model.handleMessage({ type: 'reply', id: channel.last().id, ok: false, error: 'AccessDenied: x' });
    await expanding;
    const node = model.node('pi', [['attr', 'x']]);
    expect(node.error).toBe('AccessDenied: x');
    expect(node.loading).toBe(false);
  });

  it('forgets the tree of a connection that comes back', async () => {
    const { model, channel } = setup();
    model.handleMessage(snapshot([info('pi')]));
    const expanding = model.expand('pi', []);
    model.handleMessage({ type: 'reply', id: channel.last().id, ok: true, result: { children: [] } });
    await expanding;
    model.handleMessage(snapshot([info('pi', { state: 'closed' })]));
    expect(model.node('pi', []).children).toEqual([]);
    model.handleMessage(snapshot([info('pi')]));
    expect(model.node('pi', []).children).toBeNull();
  });

  it('keeps the tree of a session that was unreachable and resumed', async () => {
    const { model, channel } = setup();
    model.handleMessage(snapshot([info('pi')]));
    const expanding = model.expand('pi', []);
    model.handleMessage({ type: 'reply', id: channel.last().id, ok: true, result: { children: [] } });
    await expanding;
    model.handleMessage(snapshot([info('pi', { state: 'unreachable', since: 3 })]));
    expect(stateText(model, model.get('pi')!)).toMatch(/^unreachable for [34] s$/);
    model.handleMessage(snapshot([info('pi', { state: 'resuming', since: 0 })]));
    model.handleMessage(snapshot([info('pi')]));
    expect(model.node('pi', []).children).toEqual([]);
    model.dispose();
  });

  it('builds the code that reaches a node', () => {
    const { model } = setup();
    model.handleMessage(snapshot([info('pi')]));
    expect(model.codeFor('pi', [['item', 'd'], ['item', 'a']])).toBe('pi.namespace["d"]["a"]');
    expect(model.codeFor('pi', [['item', 'box'], ['attr', 'size']])).toBe('pi.namespace["box"].size');
  });

  it('asks for the documentation of a node', async () => {
    const { model, channel } = setup();
    const docs = model.inspect('pi', [['item', 'f']]);
    expect(channel.last()).toMatchObject({ action: 'inspect', args: { name: 'pi', path: [['item', 'f']] } });
    model.handleMessage({
      type: 'reply',
      id: channel.last().id,
      ok: true,
      result: { info: { docstring: 'Help.' } }
    });
    await expect(docs).resolves.toEqual({ docstring: 'Help.' });
    await flush();
  });
});

describe('groups, running cells and discovery', () => {
  it('keeps the groups of each snapshot and says which groups a connection is in', () => {
    const { model } = setup();
    model.handleMessage({
      ...snapshot([info('pi1', { running: { count: 7, code: 'acquire()' } }), info('pi2')]),
      groups: [
        { name: 'bench', members: ['pi1', 'pi2'] },
        { name: 'left', members: ['pi1'] }
      ]
    });
    expect(model.groups.map(g => g.name)).toEqual(['bench', 'left']);
    expect(model.groupsOf('pi1')).toEqual(['bench', 'left']);
    expect(model.groupsOf('pi2')).toEqual(['bench']);
    expect(model.get('pi1')?.running).toEqual({ count: 7, code: 'acquire()' });
    // A kernel without groups (an older extension) sends none: nothing breaks.
    model.handleMessage(snapshot([info('pi1')]));
    expect(model.groups).toEqual([]);
    expect(model.groupsOf('pi1')).toEqual([]);
  });

  it('asks the kernel for advertised servers', async () => {
    const { model, channel } = setup();
    const found = model.discover(1);
    expect(channel.last()).toMatchObject({ action: 'discover', args: { timeout: 1 } });
    const server = { name: 'bench-a', host: '10.0.0.2', port: 4000, tls: false, service: 'Lab' };
    model.handleMessage({
      type: 'reply',
      id: channel.last().id,
      ok: true,
      result: { available: true, servers: [server] }
    });
    await expect(found).resolves.toEqual({ available: true, servers: [server] });
    const none = model.discover();
    expect(channel.last().args).toEqual({});
    model.handleMessage({
      type: 'reply',
      id: channel.last().id,
      ok: true,
      result: { available: false, servers: [] }
    });
    await expect(none).resolves.toEqual({ available: false, servers: [] });
  });
});

describe('formatting helpers', () => {
  it('writes Python literals and paths', () => {
    expect(pyLiteral('a"b')).toBe('"a\\"b"');
    expect(pyLiteral(3)).toBe('3');
    expect(pyLiteral(true)).toBe('True');
    expect(pathCode('c.root', [['attr', 'scope'], ['item', 0]])).toBe('c.root.scope[0]');
    expect(pathCode('c.namespace', [['item', 'class']])).toBe('c.namespace["class"]');
    expect(isIdentifier('x_1')).toBe(true);
    expect(isIdentifier('1x')).toBe(false);
    expect(isIdentifier('lambda')).toBe(false);
  });

  it('formats latency, bytes and long reprs', () => {
    expect(formatLatency(null)).toBe('–');
    expect(formatLatency(0.00123)).toBe('1.2 ms');
    expect(formatLatency(0.0456)).toBe('46 ms');
    expect(formatLatency(2.5)).toBe('2.5 s');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(3400)).toBe('3.4 kB');
    expect(formatBytes(12_000_000)).toBe('12 MB');
    expect(shorten('a\n  b')).toBe('a b');
    expect(shorten('x'.repeat(100), 10)).toBe('xxxxxxxxx…');
  });
});
