/**
 * The seam between a notebook's kernel and its RemoteModel: the comm.
 *
 * One KernelBridge per notebook session. It registers the frontend comm target (the kernel
 * opens a comm when `%load_ext remote_kernel` runs) and, once per kernel, opens a comm
 * itself in case the extension was loaded before this page was. A comm becomes the model's
 * channel only when the kernel has spoken on it, so a kernel without the extension (which
 * closes the comm at once) never looks attached.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { RemoteModel } from './model';
import { IRequestMessage, KernelMessage as PanelMessage, TARGET } from './protocol';

export class KernelBridge {
  readonly model: RemoteModel;

  constructor(
    private readonly _session: ISessionContext,
    model?: RemoteModel
  ) {
    this.model = model ?? new RemoteModel();
    _session.kernelChanged.connect(this._onKernelChanged, this);
    _session.statusChanged.connect(this._onStatusChanged, this);
    this._setKernel(_session.session?.kernel ?? null);
  }

  dispose(): void {
    this._session.kernelChanged.disconnect(this._onKernelChanged, this);
    this._session.statusChanged.disconnect(this._onStatusChanged, this);
    this._setKernel(null);
    this.model.dispose();
  }

  private _onKernelChanged(
    _: ISessionContext,
    change: { newValue: Kernel.IKernelConnection | null }
  ): void {
    this._setKernel(change.newValue);
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    this.model.kernelBusy = status === 'busy';
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._comm = null;
      this.model.handleMessage({ type: 'snapshot', version: 1, current: null, connections: [] });
      this.model.setChannel(null);
    }
  }

  private _setKernel(kernel: Kernel.IKernelConnection | null): void {
    if (kernel === this._kernel) {
      return;
    }
    if (this._kernel && !this._kernel.isDisposed) {
      this._kernel.removeCommTarget(TARGET, this._onCommOpen);
    }
    this._kernel = kernel;
    this._comm = null;
    this.model.handleMessage({ type: 'snapshot', version: 1, current: null, connections: [] });
    this.model.setChannel(null);
    if (!kernel) {
      return;
    }
    kernel.registerCommTarget(TARGET, this._onCommOpen);
    this._probe(kernel);
  }

  /** Ask a kernel that may already have the extension loaded for a snapshot. */
  private _probe(kernel: Kernel.IKernelConnection): void {
    try {
      const comm = kernel.createComm(TARGET);
      this._wire(comm, false);
      comm.open({ type: 'request', id: 0, action: 'snapshot', args: {} });
    } catch (error) {
      console.debug('remote_kernel: probe failed', error);
    }
  }

  private _onCommOpen = (comm: Kernel.IComm, message: KernelMessage.ICommOpenMsg): void => {
    this._wire(comm, true);
    const data = message.content.data as unknown as PanelMessage;
    if (data && data.type) {
      this.model.handleMessage(data);
    }
  };

  private _wire(comm: Kernel.IComm, adopt: boolean): void {
    if (adopt) {
      this._adopt(comm);
    }
    comm.onMsg = (message: KernelMessage.ICommMsgMsg) => {
      if (this._comm !== comm) {
        this._adopt(comm);
      }
      this.model.handleMessage(message.content.data as unknown as PanelMessage);
    };
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        this.model.setChannel(null);
      }
    };
  }

  private _adopt(comm: Kernel.IComm): void {
    this._comm = comm;
    this.model.setChannel({
      send: (message: IRequestMessage) => {
        if (comm.isDisposed) {
          throw new Error('the comm to the kernel is closed');
        }
        comm.send(message as any);
      }
    });
  }

  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
}
