/**
 * remote_kernel's JupyterLab extension: the "Remote" sidebar panel, the object browser's
 * commands and the status bar item. The kernel seam lives in channel.ts, the state in
 * model.ts, the DOM in view.ts.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Menu, Widget } from '@lumino/widgets';

import { KernelBridge } from './channel';
import { ConnectBody, IConnectValues } from './dialog';
import { RemoteModel } from './model';
import { RemotePanel } from './panel';
import { IObjectInfo, PathStep } from './protocol';
import { RemoteStatus } from './status';

const PLUGIN_ID = 'remote-kernel-lab:plugin';

namespace CommandIDs {
  export const open = 'remote-kernel:open-panel';
  export const connect = 'remote-kernel:connect';
  export const insert = 'remote-kernel:insert-code';
  export const docs = 'remote-kernel:show-docs';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 5h16v10H4z M6 7v6h12V7z"/>
    <path d="M9 17h6v2h3v2H6v-2h3z"/>
    <circle cx="12" cy="10" r="1.6"/>
  </g>
</svg>`;

export const remoteIcon = new LabIcon({ name: 'remote-kernel:icon', svgstr: ICON_SVG });

function docsBody(info: IObjectInfo, code: string): Widget {
  const body = new Widget();
  body.addClass('rk-docs');
  const lines: [string, string][] = [
    ['Code', code],
    ['Type', info.type_qualname || info.type_name],
    ['Signature', info.signature ? `${info.name || ''}${info.signature}` : ''],
    ['Value', info.string_form],
    ['File', info.file]
  ];
  for (const [label, value] of lines) {
    if (!value) {
      continue;
    }
    const row = document.createElement('div');
    row.className = 'rk-docs-row';
    const key = document.createElement('b');
    key.textContent = `${label}: `;
    const text = document.createElement('code');
    text.textContent = value;
    row.append(key, text);
    body.node.append(row);
  }
  const doc = document.createElement('pre');
  doc.className = 'rk-docs-docstring';
  doc.textContent = info.docstring || info.class_docstring || '(no documentation)';
  body.node.append(doc);
  return body;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Remote connections panel, object browser and status item for remote_kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, IStatusBar, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null,
    settings: ISettingRegistry | null
  ) => {
    const bridges = new WeakMap<NotebookPanel, KernelBridge>();
    const current = (): RemoteModel | null => {
      const widget = tracker.currentWidget;
      return widget ? bridges.get(widget)?.model ?? null : null;
    };
    const report = (title: string) => (error: Error) => {
      void showErrorMessage(title, error.message);
    };

    const panel = new RemotePanel({
      connect: () => void app.commands.execute(CommandIDs.connect),
      ping: name => current()?.ping(name).catch(report('Ping failed')),
      reconnect: name => current()?.reconnect(name).catch(() => undefined),
      disconnect: name => current()?.disconnect(name).catch(() => undefined),
      toggle: (name, path) => void current()?.toggle(name, path),
      nodeMenu: (event, name, path) => {
        const menu = new Menu({ commands: app.commands });
        menu.addClass('rk-node-menu-popup');
        menu.addItem({ command: CommandIDs.insert, args: { name, path } as any });
        menu.addItem({ command: CommandIDs.docs, args: { name, path } as any });
        menu.open(event.clientX, event.clientY);
      }
    });
    panel.title.icon = remoteIcon;
    app.shell.add(panel, 'left', { rank: 700 });
    restorer?.add(panel, 'remote-kernel-panel');

    const status = new RemoteStatus(() => app.shell.activateById(panel.id));
    statusBar?.registerStatusItem('remote-kernel:status', {
      item: status,
      align: 'left',
      rank: 5
    });

    const follow = () => {
      const model = current();
      panel.setModel(model);
      status.setModel(model);
    };
    tracker.widgetAdded.connect((_, widget) => {
      const bridge = new KernelBridge(widget.sessionContext);
      bridges.set(widget, bridge);
      widget.disposed.connect(() => {
        bridges.delete(widget);
        bridge.dispose();
        follow();
      });
      follow();
    });
    tracker.currentChanged.connect(follow);
    follow();

    if (settings) {
      settings
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            panel.pingInterval = 1000 * (loaded.get('pingInterval').composite as number);
          };
          loaded.changed.connect(apply);
          apply();
        })
        .catch(error => console.warn('remote_kernel: settings not loaded', error));
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show Remote Connections',
      execute: () => app.shell.activateById(panel.id)
    });

    app.commands.addCommand(CommandIDs.connect, {
      label: 'Connect to a Remote Interpreter…',
      isEnabled: () => !!current()?.attached,
      execute: async () => {
        const model = current();
        if (!model) {
          return;
        }
        const files = await model.files().catch(() => []);
        // Asked after the files (the kernel answers in order), shown when it arrives.
        const discovered = model.discover().catch(() => null);
        const result = await showDialog<IConnectValues>({
          title: 'Connect to a remote interpreter',
          body: new ConnectBody(files, discovered),
          buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Connect' })],
          focusNodeSelector: '.rk-connect-target'
        });
        if (!result.button.accept || !result.value?.target) {
          return;
        }
        const { target, tokenFile, name } = result.value;
        await model.connect(target, tokenFile, name).catch(report('Connection failed'));
      }
    });

    const nodeArgs = (args: any): { name: string; path: PathStep[] } => ({
      name: String(args.name),
      path: (args.path ?? []) as PathStep[]
    });

    app.commands.addCommand(CommandIDs.insert, {
      label: 'Insert Code Into Cell',
      caption: 'Insert the code that reaches this object into the active cell',
      execute: args => {
        const model = current();
        const notebook = tracker.currentWidget?.content;
        const cell = notebook?.activeCell;
        if (!model || !cell) {
          return;
        }
        const { name, path } = nodeArgs(args);
        const code = model.codeFor(name, path);
        const editor = cell.editor;
        if (editor) {
          editor.replaceSelection?.(code);
          editor.focus();
        } else {
          cell.model.sharedModel.setSource(cell.model.sharedModel.getSource() + code);
        }
      }
    });

    app.commands.addCommand(CommandIDs.docs, {
      label: 'Show Documentation',
      caption: 'Show type, signature and docstring of this object',
      execute: async args => {
        const model = current();
        if (!model) {
          return;
        }
        const { name, path } = nodeArgs(args);
        const code = model.codeFor(name, path);
        try {
          const info = await model.inspect(name, path);
          await showDialog({
            title: code,
            body: docsBody(info, code),
            buttons: [Dialog.okButton({ label: 'Close' })]
          });
        } catch (error) {
          report('Documentation not available')(error as Error);
        }
      }
    });
  }
};

export default plugin;
