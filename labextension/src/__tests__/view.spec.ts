import { RemoteModel } from '../model';
import { IChannel, IConnectionInfo, IRequestMessage } from '../protocol';
import { IViewActions, renderPanel, runningLabel } from '../view';

class FakeChannel implements IChannel {
  sent: IRequestMessage[] = [];
  send(message: IRequestMessage): void {
    this.sent.push(message);
  }
}

function info(name: string, extra: Partial<IConnectionInfo> = {}): IConnectionInfo {
  return {
    name,
    target: 'lab.local:18812',
    state: 'open',
    latency: 0.0021,
    stats: { requests: 12, bytes_in: 3400, bytes_out: 900 },
    code_root: `${name}.namespace`,
    root_label: 'namespace',
    ...extra
  };
}

function actions(): IViewActions & { calls: any[] } {
  const calls: any[] = [];
  return {
    calls,
    connect: () => calls.push(['connect']),
    ping: name => calls.push(['ping', name]),
    reconnect: name => calls.push(['reconnect', name]),
    disconnect: name => calls.push(['disconnect', name]),
    toggle: (name, path) => calls.push(['toggle', name, path]),
    nodeMenu: (_, name, path) => calls.push(['menu', name, path])
  };
}

describe('renderPanel', () => {
  it('asks for %load_ext while the kernel side is missing', () => {
    const host = document.createElement('div');
    renderPanel(host, new RemoteModel(), actions());
    expect(host.querySelector('.rk-message')?.textContent).toContain('%load_ext remote_kernel');
    expect((host.querySelector('.rk-connect-button') as HTMLButtonElement).disabled).toBe(true);
  });

  it('shows each connection with state, latency and traffic, and wires the buttons', () => {
    const model = new RemoteModel();
    model.setChannel(new FakeChannel());
    model.handleMessage({
      type: 'snapshot',
      version: 1,
      current: 'pi',
      connections: [info('pi'), info('old', { state: 'closed', latency: 0.1, error: 'peer went away' })]
    });
    const host = document.createElement('div');
    const acts = actions();
    renderPanel(host, model, acts);
    const items = host.querySelectorAll('.rk-connection');
    expect(items).toHaveLength(2);
    const pi = items[0] as HTMLElement;
    expect(pi.dataset.state).toBe('open');
    expect(pi.classList.contains('rk-current')).toBe(true);
    expect(pi.querySelector('.rk-latency')?.textContent).toBe('2.1 ms');
    expect(pi.querySelector('.rk-conn-stats')?.textContent).toBe('12 requests · ↓ 3.4 kB · ↑ 900 B');
    const old = items[1] as HTMLElement;
    expect(old.querySelector('.rk-state')?.textContent).toBe('closed');
    expect(old.querySelector('.rk-latency')?.textContent).toBe('–');
    expect(old.querySelector('.rk-conn-error')?.textContent).toBe('peer went away');
    expect(pi.querySelector('.rk-conn-error')).toBeNull();
    expect((old.querySelector('.rk-ping') as HTMLButtonElement).disabled).toBe(true);
    expect(old.querySelector('.rk-tree')).toBeNull();

    (pi.querySelector('.rk-ping') as HTMLButtonElement).click();
    (pi.querySelector('.rk-reconnect') as HTMLButtonElement).click();
    (old.querySelector('.rk-disconnect') as HTMLButtonElement).click();
    (host.querySelector('.rk-connect-button') as HTMLButtonElement).click();
    (pi.querySelector('.rk-node-row') as HTMLElement).click();
    expect(acts.calls).toEqual([
      ['ping', 'pi'],
      ['reconnect', 'pi'],
      ['disconnect', 'old'],
      ['connect'],
      ['toggle', 'pi', []]
    ]);
  });

  it('keeps its elements across re-renders so clicks are not lost', () => {
    const model = new RemoteModel();
    model.setChannel(new FakeChannel());
    model.handleMessage({ type: 'snapshot', version: 1, current: 'pi', connections: [info('pi')] });
    const host = document.createElement('div');
    const acts = actions();
    renderPanel(host, model, acts);
    const row = host.querySelector('.rk-node-row');
    const latency = host.querySelector('.rk-latency');
    model.handleMessage({
      type: 'snapshot',
      version: 1,
      current: 'pi',
      connections: [info('pi', { latency: 0.5 })]
    });
    renderPanel(host, model, acts);
    expect(host.querySelector('.rk-node-row')).toBe(row);
    expect(host.querySelector('.rk-latency')).toBe(latency);
    expect(latency?.textContent).toBe('500 ms');
    model.handleMessage({ type: 'snapshot', version: 1, current: null, connections: [] });
    renderPanel(host, model, acts);
    expect(host.querySelector('.rk-connection')).toBeNull();
    expect(host.querySelectorAll('.rk-toolbar')).toHaveLength(1);
  });

  it('renders expanded nodes with type and repr and opens the node menu', async () => {
    const model = new RemoteModel();
    const channel = new FakeChannel();
    model.setChannel(channel);
    model.handleMessage({ type: 'snapshot', version: 1, current: 'pi', connections: [info('pi')] });
    const expanding = model.expand('pi', []);
    model.handleMessage({
      type: 'reply',
      id: channel.sent[0].id,
      ok: true,
      result: {
        children: [
          { name: 'd', kind: 'item', key: 'd', type: 'dict', repr: "{'a': 1}", expandable: true },
          { name: 'n', kind: 'item', key: 'n', type: 'int', repr: '42', expandable: false }
        ]
      }
    });
    await expanding;
    const host = document.createElement('div');
    const acts = actions();
    renderPanel(host, model, acts);
    const nodes = host.querySelectorAll('.rk-children > .rk-node');
    expect(nodes).toHaveLength(2);
    const d = nodes[0] as HTMLElement;
    expect(d.dataset.path).toBe('[["item","d"]]');
    expect(d.querySelector('.rk-node-type')?.textContent).toBe('dict');
    expect(d.querySelector('.rk-node-repr')?.textContent).toBe("{'a': 1}");
    expect(d.querySelector('.rk-caret')?.textContent).toBe('▸');
    expect(nodes[1].querySelector('.rk-node-row')?.classList.contains('rk-expandable')).toBe(false);
    (d.querySelector('.rk-node-menu') as HTMLButtonElement).click();
    d.querySelector('.rk-node-row')!.dispatchEvent(new MouseEvent('contextmenu', { bubbles: true }));
    expect(acts.calls).toEqual([
      ['menu', 'pi', [['item', 'd']]],
      ['menu', 'pi', [['item', 'd']]]
    ]);
  });

  it('marks the connections whose output is trusted', () => {
    const model = new RemoteModel();
    model.setChannel(new FakeChannel());
    model.handleMessage({
      type: 'snapshot',
      version: 1,
      current: 'pi1',
      connections: [info('pi1', { trusted: true }), info('pi2')]
    });
    const host = document.createElement('div');
    renderPanel(host, model, actions());
    const badge = (name: string) =>
      host.querySelector(`.rk-connection[data-name="${name}"] .rk-trusted`);
    expect(badge('pi1')?.textContent).toBe('trusted');
    expect(badge('pi2')).toBeNull();
  });

  it('shows the cell running on each connection and the groups', () => {
    const model = new RemoteModel();
    model.setChannel(new FakeChannel());
    model.handleMessage({
      type: 'snapshot',
      version: 1,
      current: 'pi1',
      connections: [
        info('pi1', { running: { count: 12, code: 'for i in range(3):' } }),
        info('pi2'),
        info('pi3', { state: 'closed' })
      ],
      groups: [{ name: 'bench', members: ['pi1', 'pi2', 'pi3', 'gone'] }]
    });
    const host = document.createElement('div');
    renderPanel(host, model, actions());
    const group = host.querySelector('.rk-group[data-name="bench"]') as HTMLElement;
    expect(group.querySelector('.rk-group-name')?.textContent).toBe('bench');
    const members = Array.from(group.querySelectorAll('.rk-group-member')) as HTMLElement[];
    expect(members.map(m => m.textContent)).toEqual(['pi1', 'pi2', 'pi3', 'gone']);
    expect(members.map(m => m.dataset.state)).toEqual(['open', 'open', 'closed', 'closed']);
    expect(members[0].classList.contains('rk-busy')).toBe(true);
    expect(members[0].title).toBe('running [12] for i in range(3):');
    expect(members[1].classList.contains('rk-busy')).toBe(false);
    const pi1 = host.querySelector('.rk-connection[data-name="pi1"]') as HTMLElement;
    expect(pi1.querySelector('.rk-conn-running')?.textContent).toBe('▶ [12] for i in range(3):');
    expect(pi1.querySelector('.rk-conn-groups')?.textContent).toBe('in bench');
    const pi2 = host.querySelector('.rk-connection[data-name="pi2"]') as HTMLElement;
    expect(pi2.querySelector('.rk-conn-running')).toBeNull();
    // The cell ends: the next snapshot says so and the line goes away.
    model.handleMessage({
      type: 'snapshot',
      version: 1,
      current: 'pi1',
      connections: [info('pi1'), info('pi2')],
      groups: []
    });
    renderPanel(host, model, actions());
    expect(host.querySelector('.rk-conn-running')).toBeNull();
    expect(host.querySelector('.rk-groups')).toBeNull();
    expect(runningLabel({ count: null, code: '' })).toBe('a cell');
  });
});
