/**
 * The panel's DOM, built from a RemoteModel with plain DOM calls (no JupyterLab imports, so
 * jest renders it in jsdom). Class names are the hooks for styles and browser tests.
 */

import { formatBytes, formatLatency, ITreeNode, pathKey, RemoteModel, shorten } from './model';
import { IChildInfo, IConnectionInfo, IGroupInfo, PathStep } from './protocol';

/** What the view asks its owner to do. */
export interface IViewActions {
  connect(): void;
  ping(name: string): void;
  reconnect(name: string): void;
  disconnect(name: string): void;
  toggle(name: string, path: PathStep[]): void;
  /** Open the node menu (insert code, show documentation) at the event's position. */
  nodeMenu(event: MouseEvent, name: string, path: PathStep[]): void;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function button(className: string, label: string, title: string, action: string) {
  const node = el('button', `rk-button ${className}`, label);
  node.type = 'button';
  node.title = title;
  node.dataset.action = action;
  return node;
}

const bound = new WeakMap<HTMLElement, IViewActions>();

/**
 * Render the panel into `host`. The new DOM is merged into the old one (same elements where
 * the structure is the same), so a click is never lost to a re-render: the panel re-renders
 * after every ping. Events are handled once, on `host`, from the data attributes.
 */
export function renderPanel(host: HTMLElement, model: RemoteModel | null, actions: IViewActions) {
  if (!bound.has(host)) {
    host.addEventListener('click', event => dispatch(host, event, false));
    host.addEventListener('contextmenu', event => dispatch(host, event, true));
  }
  bound.set(host, actions);
  const fresh = document.createElement('div');
  build(fresh, model);
  morphChildren(host, fresh);
}

function dispatch(host: HTMLElement, event: MouseEvent, context: boolean): void {
  const actions = bound.get(host);
  const target = event.target as HTMLElement | null;
  if (!actions || !target || !target.closest) {
    return;
  }
  const item = target.closest('.rk-connection') as HTMLElement | null;
  const name = item?.dataset.name ?? '';
  const node = target.closest('.rk-node') as HTMLElement | null;
  const path = node ? (JSON.parse(node.dataset.path ?? '[]') as PathStep[]) : [];
  if (context) {
    if (node) {
      event.preventDefault();
      event.stopPropagation();
      actions.nodeMenu(event, name, path);
    }
    return;
  }
  const actor = target.closest('[data-action]') as HTMLElement | null;
  if (!actor || (actor as HTMLButtonElement).disabled) {
    return;
  }
  event.stopPropagation();
  switch (actor.dataset.action) {
    case 'connect':
      return actions.connect();
    case 'ping':
      return actions.ping(name);
    case 'reconnect':
      return actions.reconnect(name);
    case 'disconnect':
      return actions.disconnect(name);
    case 'menu':
      return actions.nodeMenu(event, name, path);
    case 'toggle':
      return actions.toggle(name, path);
  }
}

/** Make `target`'s children look like `source`'s, reusing elements of the same kind. */
export function morphChildren(target: Node, source: Node): void {
  const old = Array.from(target.childNodes);
  const fresh = Array.from(source.childNodes);
  fresh.forEach((node, index) => {
    const current = old[index];
    if (current && sameKind(current, node)) {
      if (current.nodeType === Node.TEXT_NODE) {
        if (current.nodeValue !== node.nodeValue) {
          current.nodeValue = node.nodeValue;
        }
      } else {
        morphAttributes(current as Element, node as Element);
        morphChildren(current, node);
      }
    } else if (current) {
      target.replaceChild(node, current);
    } else {
      target.appendChild(node);
    }
  });
  for (const extra of old.slice(fresh.length)) {
    target.removeChild(extra);
  }
}

function sameKind(a: Node, b: Node): boolean {
  if (a.nodeType !== b.nodeType) {
    return false;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    return true;
  }
  const x = a as HTMLElement;
  const y = b as HTMLElement;
  return (
    x.tagName === y.tagName &&
    x.dataset.name === y.dataset.name &&
    x.dataset.path === y.dataset.path &&
    x.dataset.action === y.dataset.action
  );
}

function morphAttributes(target: Element, source: Element): void {
  for (const attr of Array.from(target.attributes)) {
    if (!source.hasAttribute(attr.name)) {
      target.removeAttribute(attr.name);
    }
  }
  for (const attr of Array.from(source.attributes)) {
    if (target.getAttribute(attr.name) !== attr.value) {
      target.setAttribute(attr.name, attr.value);
    }
  }
  if (target instanceof HTMLButtonElement && source instanceof HTMLButtonElement) {
    target.disabled = source.disabled;
  }
}

function build(host: HTMLElement, model: RemoteModel | null): void {
  const toolbar = el('div', 'rk-toolbar');
  toolbar.append(el('span', 'rk-title', 'Remote connections'));
  const connect = button(
    'rk-connect-button',
    'Connect…',
    'Connect to a remote interpreter',
    'connect'
  );
  connect.disabled = !model?.attached;
  toolbar.append(connect);
  host.append(toolbar);

  if (!model) {
    host.append(el('div', 'rk-message', 'Open a notebook to see its remote connections.'));
    return;
  }
  if (!model.attached) {
    host.append(
      el('div', 'rk-message', 'Run %load_ext remote_kernel in this notebook to use the panel.')
    );
    return;
  }
  if (model.lastError) {
    host.append(el('div', 'rk-error', model.lastError));
  }
  if (model.connections.length === 0) {
    host.append(el('div', 'rk-message', 'No connections yet: use Connect… or %remote connect.'));
    return;
  }
  if (model.groups.length) {
    host.append(renderGroups(model, model.groups));
  }
  const list = el('ul', 'rk-connections');
  for (const info of model.connections) {
    list.append(renderConnection(model, info));
  }
  host.append(list);
}

/** One line per group: its name, then its members (a dot each: running or not). */
function renderGroups(model: RemoteModel, groups: IGroupInfo[]): HTMLElement {
  const section = el('div', 'rk-groups');
  section.append(el('div', 'rk-groups-title', 'Groups'));
  for (const group of groups) {
    const row = el('div', 'rk-group');
    row.dataset.name = group.name;
    row.append(el('span', 'rk-group-name', group.name));
    for (const member of group.members) {
      const info = model.get(member);
      const chip = el('span', 'rk-group-member', member);
      chip.dataset.state = info?.state ?? 'closed';
      if (info?.running) {
        chip.classList.add('rk-busy');
        chip.title = `running ${runningLabel(info.running)}`;
      } else {
        chip.title = info ? info.state : 'not connected';
      }
      row.append(chip);
    }
    section.append(row);
  }
  return section;
}

/** "[12] for i in range(3):" or "a cell" when the count is unknown. */
export function runningLabel(running: { count: number | null; code: string }): string {
  const count = running.count !== null && running.count !== undefined ? `[${running.count}] ` : '';
  return `${count}${running.code || 'a cell'}`;
}

function renderConnection(model: RemoteModel, info: IConnectionInfo) {
  const item = el('li', 'rk-connection');
  item.dataset.name = info.name;
  item.dataset.state = info.state;
  if (info.name === model.current) {
    item.classList.add('rk-current');
  }

  const header = el('div', 'rk-conn-header');
  header.append(el('span', 'rk-conn-name', info.name));
  header.append(el('span', `rk-state rk-state-${info.state}`, info.state));
  const waited = model.secondsInState(info);
  if ((info.state === 'unreachable' || info.state === 'resuming') && waited !== null) {
    const since = el('span', 'rk-since', `for ${Math.round(waited)} s`);
    since.title =
      info.state === 'unreachable'
        ? 'the link went silent; the session is kept and resumes when it returns'
        : 'the session is resuming on a new link';
    header.append(since);
  }
  if (info.trusted) {
    const trusted = el('span', 'rk-trusted', 'trusted');
    trusted.title = "this connection's output is shown unfiltered (connected with --trust)";
    header.append(trusted);
  }
  const open = info.state === 'open';
  // An unreachable session keeps its objects: its tree stays; calls wait for the link.
  const live = info.state !== 'closed';
  const latency = el('span', 'rk-latency', open ? formatLatency(info.latency) : '–');
  latency.title = 'round trip of the last ping';
  header.append(latency);
  item.append(header);

  item.append(el('div', 'rk-conn-target', info.target));
  const groups = model.groupsOf(info.name);
  if (groups.length) {
    item.append(el('div', 'rk-conn-groups', `in ${groups.join(', ')}`));
  }
  if (info.running) {
    const running = el('div', 'rk-conn-running', `▶ ${runningLabel(info.running)}`);
    running.title = 'the notebook cell running on this connection';
    item.append(running);
  }
  if (!live && info.error) {
    item.append(el('div', 'rk-conn-error', info.error));
  }
  const stats = info.stats ?? { requests: 0, bytes_in: 0, bytes_out: 0 };
  const statsLine = el(
    'div',
    'rk-conn-stats',
    `${stats.requests} requests · ↓ ${formatBytes(stats.bytes_in)} · ↑ ${formatBytes(stats.bytes_out)}`
  );
  statsLine.title = 'requests sent, bytes received and sent';
  item.append(statsLine);

  const bar = el('div', 'rk-conn-actions');
  const ping = button('rk-ping', 'Ping', 'Measure the round trip now', 'ping');
  ping.disabled = !open;
  bar.append(ping);
  bar.append(button('rk-reconnect', 'Reconnect', 'Close and open the connection again', 'reconnect'));
  bar.append(button('rk-disconnect', 'Disconnect', 'Close this connection', 'disconnect'));
  item.append(bar);

  if (live) {
    const tree = el('div', 'rk-tree');
    tree.append(renderNode(model, info.name, null, [], info.root_label || 'root'));
    item.append(tree);
  }
  return item;
}

function renderNode(
  model: RemoteModel,
  name: string,
  child: IChildInfo | null,
  path: PathStep[],
  label: string
): HTMLElement {
  const node: ITreeNode = model.node(name, path);
  const expandable = child === null || child.expandable;
  const wrapper = el('div', 'rk-node');
  wrapper.dataset.path = pathKey(path);
  wrapper.dataset.name = label;

  const row = el('div', 'rk-node-row');
  const caret = el('span', 'rk-caret', expandable ? (node.expanded ? '▾' : '▸') : ' ');
  row.append(caret);
  row.append(el('span', 'rk-node-name', label));
  if (child) {
    row.append(el('span', 'rk-node-type', child.type));
    const repr = el('span', 'rk-node-repr', shorten(child.repr));
    repr.title = child.repr;
    row.append(repr);
  }
  row.append(button('rk-node-menu', '⋯', 'Insert code or show documentation', 'menu'));
  if (expandable) {
    row.classList.add('rk-expandable');
    row.dataset.action = 'toggle';
  }
  wrapper.append(row);

  if (node.expanded) {
    const children = el('div', 'rk-children');
    if (node.loading) {
      children.append(el('div', 'rk-loading', 'loading…'));
    } else if (node.error) {
      children.append(el('div', 'rk-error', node.error));
    } else if (node.children && node.children.length === 0) {
      children.append(el('div', 'rk-empty', '(empty)'));
    } else {
      for (const sub of node.children ?? []) {
        const subPath: PathStep[] = [...path, [sub.kind, sub.key]];
        children.append(renderNode(model, name, sub, subPath, sub.name));
      }
    }
    wrapper.append(children);
  }
  return wrapper;
}
