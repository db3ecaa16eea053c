/**
 * The "Remote" sidebar: a Lumino widget that renders the current notebook's RemoteModel and
 * pings its connections every few seconds while it is visible.
 */

import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { RemoteModel } from './model';
import { IViewActions, renderPanel } from './view';

export class RemotePanel extends Widget {
  constructor(private readonly _actions: IViewActions) {
    super();
    this.addClass('rk-panel');
    this.id = 'remote-kernel-panel';
    this.title.caption = 'Remote connections';
    this.render();
  }

  /** Milliseconds between pings while visible. */
  get pingInterval(): number {
    return this._pingInterval;
  }

  set pingInterval(value: number) {
    this._pingInterval = Math.max(500, value);
    this._syncPinging();
  }

  get model(): RemoteModel | null {
    return this._model;
  }

  setModel(model: RemoteModel | null): void {
    if (model === this._model) {
      return;
    }
    if (this._model) {
      this._model.changed.disconnect(this._onChanged);
      this._model.stopPinging();
    }
    this._model = model;
    if (model) {
      model.changed.connect(this._onChanged);
    }
    this._syncPinging();
    this.render();
  }

  render(): void {
    renderPanel(this.node, this._model, this._actions);
  }

  dispose(): void {
    this.setModel(null);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._syncPinging();
    this.render();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._syncPinging();
  }

  private _syncPinging(): void {
    const model = this._model;
    if (!model) {
      return;
    }
    if (this.isVisible) {
      model.startPinging(this._pingInterval);
    } else {
      model.stopPinging();
    }
  }

  private _onChanged = (): void => {
    // Starting to ping needs a channel; the model tells us when one arrives.
    if (this.isVisible && this._model && !this._model.isPinging) {
      this._model.startPinging(this._pingInterval);
    }
    this.render();
  };

  private _model: RemoteModel | null = null;
  private _pingInterval = 5000;
}
