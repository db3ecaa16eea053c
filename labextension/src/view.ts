/**
 * The panel's DOM, built from a RemoteModel with plain DOM calls (no JupyterLab imports, so
 * jest renders it in jsdom). Class names are the hooks for styles and browser tests.
 */

import { formatBytes, formatLatency, ITreeNode, pathKey, RemoteModel, shorten } from './model';
import { IChildInfo, IConnectionInfo, PathStep } from './protocol';

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

function button(className: string, label: string, title: string, onClick: () => void) {
  const node = el('button', `rk-button ${className}`, label);
  node.type = 'button';
  node.title = title;
  node.addEventListener('click', event => {
    event.stopPropagation();
    onClick();
  });
  return node;
}

/** Render the whole panel body into `host` (replacing what was there). */
export function renderPanel(host: HTMLElement, model: RemoteModel | null, actions: IViewActions) {
  host.replaceChildren();
  const toolbar = el('div', 'rk-toolbar');
  toolbar.append(el('span', 'rk-title', 'Remote connections'));
  const connect = button('rk-connect-button', 'Connect…', 'Connect to a remote interpreter', () =>
    actions.connect()
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
  const list = el('ul', 'rk-connections');
  for (const info of model.connections) {
    list.append(renderConnection(model, info, actions));
  }
  host.append(list);
}

function renderConnection(model: RemoteModel, info: IConnectionInfo, actions: IViewActions) {
  const item = el('li', 'rk-connection');
  item.dataset.name = info.name;
  item.dataset.state = info.state;
  if (info.name === model.current) {
    item.classList.add('rk-current');
  }

  const header = el('div', 'rk-conn-header');
  header.append(el('span', 'rk-conn-name', info.name));
  header.append(el('span', `rk-state rk-state-${info.state}`, info.state));
  const latency = el('span', 'rk-latency', formatLatency(info.latency));
  latency.title = 'round trip of the last ping';
  header.append(latency);
  item.append(header);

  item.append(el('div', 'rk-conn-target', info.target));
  const stats = info.stats ?? { requests: 0, bytes_in: 0, bytes_out: 0 };
  const statsLine = el(
    'div',
    'rk-conn-stats',
    `${stats.requests} requests · ↓ ${formatBytes(stats.bytes_in)} · ↑ ${formatBytes(stats.bytes_out)}`
  );
  statsLine.title = 'requests sent, bytes received and sent';
  item.append(statsLine);

  const bar = el('div', 'rk-conn-actions');
  const ping = button('rk-ping', 'Ping', 'Measure the round trip now', () => actions.ping(info.name));
  ping.disabled = info.state !== 'connected';
  bar.append(ping);
  bar.append(
    button('rk-reconnect', 'Reconnect', 'Close and open the connection again', () =>
      actions.reconnect(info.name)
    )
  );
  bar.append(
    button('rk-disconnect', 'Disconnect', 'Close this connection', () =>
      actions.disconnect(info.name)
    )
  );
  item.append(bar);

  if (info.state === 'connected') {
    const tree = el('div', 'rk-tree');
    tree.append(renderNode(model, info.name, null, [], info.root_label || 'root', actions));
    item.append(tree);
  }
  return item;
}

function renderNode(
  model: RemoteModel,
  name: string,
  child: IChildInfo | null,
  path: PathStep[],
  label: string,
  actions: IViewActions
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
  const menu = el('button', 'rk-button rk-node-menu', '⋯');
  menu.type = 'button';
  menu.title = 'Insert code or show documentation';
  menu.addEventListener('click', event => {
    event.stopPropagation();
    actions.nodeMenu(event, name, path);
  });
  row.append(menu);
  row.addEventListener('contextmenu', event => {
    event.preventDefault();
    event.stopPropagation();
    actions.nodeMenu(event, name, path);
  });
  if (expandable) {
    row.classList.add('rk-expandable');
    row.addEventListener('click', () => actions.toggle(name, path));
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
        children.append(renderNode(model, name, sub, subPath, sub.name, actions));
      }
    }
    wrapper.append(children);
  }
  return wrapper;
}
