/**
 * The status bar item: the current connection, its state and its latency.
 */

import { Widget } from '@lumino/widgets';

import { formatLatency, RemoteModel, stateText } from './model';

export class RemoteStatus extends Widget {
  constructor(private readonly _onClick: () => void) {
    super();
    this.addClass('rk-status');
    this.node.title = 'Remote connection (click to open the Remote panel)';
    this.node.addEventListener('click', () => this._onClick());
    this.render();
  }

  setModel(model: RemoteModel | null): void {
    if (model === this._model) {
      return;
    }
    this._model?.changed.disconnect(this._render);
    this._model = model;
    model?.changed.connect(this._render);
    this.render();
  }

  /** The text shown, or "" when there is nothing to show (the item hides). */
  static text(model: RemoteModel | null): string {
    const info = model?.attached ? model.shown : undefined;
    if (!info) {
      return '';
    }
    const detail = info.state === 'open' ? formatLatency(info.latency) : stateText(model!, info);
    const more = model!.connections.length > 1 ? ` (+${model!.connections.length - 1})` : '';
    return `Remote: ${info.name}${more} · ${detail}`;
  }

  render(): void {
    const text = RemoteStatus.text(this._model);
    this.node.textContent = text;
    this.node.dataset.state = this._model?.shown?.state ?? '';
    this.node.style.display = text ? '' : 'none';
  }

  private _render = (): void => this.render();
  private _model: RemoteModel | null = null;
}
