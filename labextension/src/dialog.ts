/**
 * The connect dialog's body: a target, an optional token file and name, the live connection
 * files of this machine (`remote-kernel serve` writes them) and the servers advertised on the
 * local network (`remote-kernel serve --advertise`), to pick from.
 */

import { Widget } from '@lumino/widgets';

import { IConnectionFile, IDiscovery } from './protocol';

export interface IConnectValues {
  target: string;
  tokenFile: string;
  name: string;
}

export class ConnectBody extends Widget {
  /**
   * `discovered` settles when the kernel has listened to the network (about 1.5 s); until
   * then the section says it is searching. Null: the kernel could not be asked.
   */
  constructor(files: IConnectionFile[], discovered?: Promise<IDiscovery | null>) {
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
      const where = file.host !== undefined ? `${file.host}:${file.port}` : file.file ?? '';
      const item = this._choice('rk-connect-file', file.name, where, file.service);
      item.title = file.file ?? '';
      list.append(item);
    }
    this.node.append(list);
    if (discovered) {
      this._network(discovered);
    }
  }

  getValue(): IConnectValues {
    return {
      target: this._target.value.trim(),
      tokenFile: this._tokenFile.value.trim(),
      name: this._name.value.trim()
    };
  }

  /** The "on the network" section, filled in when the kernel's answer arrives. */
  private _network(discovered: Promise<IDiscovery | null>): void {
    const heading = document.createElement('div');
    heading.className = 'rk-connect-heading rk-connect-network-heading';
    heading.textContent = 'Searching the local network…';
    const list = document.createElement('ul');
    list.className = 'rk-connect-network';
    this.node.append(heading, list);
    void discovered.then(
      result => {
        if (!result) {
          heading.textContent = 'The local network could not be searched';
        } else if (!result.available) {
          heading.textContent = 'Discovery is not available in this kernel (zeroconf)';
        } else if (!result.servers.length) {
          heading.textContent = 'No servers advertised on the local network';
        } else {
          heading.textContent = 'Advertised on the local network (needs its token file)';
          for (const server of result.servers) {
            const item = this._choice(
              'rk-connect-server',
              server.name,
              `${server.host}:${server.port}${server.tls ? ' TLS' : ''}`,
              server.service
            );
            list.append(item);
          }
        }
      },
      () => {
        heading.textContent = 'The local network could not be searched';
      }
    );
  }

  /** A row that puts `name` into the target field when clicked. */
  private _choice(className: string, name: string, where: string, service?: string): HTMLElement {
    const item = document.createElement('li');
    item.className = className;
    item.dataset.name = name;
    item.textContent = `${name}  ${where}${service ? `  (${service})` : ''}`;
    item.addEventListener('click', () => {
      this._target.value = name;
      this.node.querySelectorAll('.rk-selected').forEach(node => node.classList.remove('rk-selected'));
      item.classList.add('rk-selected');
    });
    return item;
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
