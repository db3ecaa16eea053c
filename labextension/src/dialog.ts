/**
 * The connect dialog's body: a target, an optional token file and name, and the live
 * connection files of this machine (`remote-kernel serve` writes them) to pick from.
 */

import { Widget } from '@lumino/widgets';

import { IConnectionFile } from './protocol';

export interface IConnectValues {
  target: string;
  tokenFile: string;
  name: string;
}

export class ConnectBody extends Widget {
  constructor(files: IConnectionFile[]) {
    super();
    this.addClass('rk-connect');
    this._target = this._field('Target', 'rk-connect-target', 'host:port or a connection-file name');
    this._tokenFile = this._field('Token file', 'rk-connect-token', 'optional: a file holding the token');
    this._name = this._field('Name', 'rk-connect-name', 'optional: the name in the notebook');
    const heading = document.createElement('div');
    heading.className = 'rk-connect-heading';
    heading.textContent = files.length ? 'Running servers on this machine' : 'No running servers found';
    this.node.append(heading);
    const list = document.createElement('ul');
    list.className = 'rk-connect-files';
    for (const file of files) {
      const item = document.createElement('li');
      item.className = 'rk-connect-file';
      item.dataset.name = file.name;
      const where = file.host !== undefined ? `${file.host}:${file.port}` : file.file ?? '';
      item.textContent = `${file.name}  ${where}${file.service ? `  (${file.service})` : ''}`;
      item.title = file.file ?? '';
      item.addEventListener('click', () => {
        this._target.value = file.name;
        list.querySelectorAll('.rk-selected').forEach(node => node.classList.remove('rk-selected'));
        item.classList.add('rk-selected');
      });
      list.append(item);
    }
    this.node.append(list);
  }

  getValue(): IConnectValues {
    return {
      target: this._target.value.trim(),
      tokenFile: this._tokenFile.value.trim(),
      name: this._name.value.trim()
    };
  }

  private _field(label: string, className: string, placeholder: string): HTMLInputElement {
    const row = document.createElement('label');
    row.className = 'rk-connect-row';
    const text = document.createElement('span');
    text.textContent = label;
    const input = document.createElement('input');
    input.className = `jp-mod-styled ${className}`;
    input.placeholder = placeholder;
    row.append(text, input);
    this.node.append(row);
    return input;
  }

  private _target: HTMLInputElement;
  private _tokenFile: HTMLInputElement;
  private _name: HTMLInputElement;
}
