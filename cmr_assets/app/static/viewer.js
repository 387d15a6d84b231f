// Image views on <canvas>: the heart crop (or the full field of view), window/level, zoom and pan,
// all computed in the browser from the one PNG each image was loaded from (no request per change).
"use strict";

const Viewer = (() => {
  const DEFAULT_WINDOW = { width: 255, level: 127.5 }; // identity: stored grey values shown as they are
  const MIN_WIDTH = 8;
  const MAX_WIDTH = 510;
  const MAX_ZOOM = 8;

  // One image: grey values read once, redrawn through a lookup table on every change.
  class ImageView {
    constructor(canvas) {
      this.canvas = canvas;
      this.grey = null;
      this.size = [0, 0];
      this.crop = null;
      this.full = false;
      this.window = { ...DEFAULT_WINDOW };
      this.zoom = 1;
      this.centre = null; // [row, col] of the view centre when zoomed
    }

    async load(url, crop) {
      const image = new Image();
      image.src = url;
      await image.decode();
      const scratch = document.createElement("canvas");
      scratch.width = image.naturalWidth;
      scratch.height = image.naturalHeight;
      const context = scratch.getContext("2d", { willReadFrequently: true });
      context.drawImage(image, 0, 0);
      const rgba = context.getImageData(0, 0, scratch.width, scratch.height).data;
      this.grey = new Uint8ClampedArray(scratch.width * scratch.height);
      for (let i = 0; i < this.grey.length; i += 1) this.grey[i] = rgba[4 * i];
      this.size = [scratch.height, scratch.width];
      this.crop = crop && crop.length === 4 ? crop : null;
      this.canvas.dataset.src = url;
      this.draw();
      return this;
    }

    // [top, left, bottom, right] of what is on screen: crop or full view, narrowed by the zoom.
    region() {
      const [rows, cols] = this.size;
      const [top, left, bottom, right] = this.full || !this.crop ? [0, 0, rows, cols] : this.crop;
      if (this.zoom === 1 || !this.centre) return [top, left, bottom, right];
      const height = (bottom - top) / this.zoom;
      const width = (right - left) / this.zoom;
      const row0 = Math.min(Math.max(top, this.centre[0] - height / 2), bottom - height);
      const col0 = Math.min(Math.max(left, this.centre[1] - width / 2), right - width);
      return [Math.round(row0), Math.round(col0), Math.round(row0 + height), Math.round(col0 + width)];
    }

    draw() {
      if (!this.grey) return;
      const [top, left, bottom, right] = this.region();
      const width = Math.max(1, right - left);
      const height = Math.max(1, bottom - top);
      if (this.canvas.width !== width) this.canvas.width = width;
      if (this.canvas.height !== height) this.canvas.height = height;
      const lut = lookupTable(this.window);
      const context = this.canvas.getContext("2d");
      const out = context.createImageData(width, height);
      const cols = this.size[1];
      for (let r = 0; r < height; r += 1) {
        const source = (top + r) * cols + left;
        for (let c = 0; c < width; c += 1) {
          const value = lut[this.grey[source + c]];
          const at = 4 * (r * width + c);
          out.data[at] = value;
          out.data[at + 1] = value;
          out.data[at + 2] = value;
          out.data[at + 3] = 255;
        }
      }
      context.putImageData(out, 0, 0);
    }

    setWindow(window) {
      this.window = {
        width: Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, window.width)),
        level: Math.min(255, Math.max(0, window.level)),
      };
      this.draw();
    }

    adjustWindow(dWidth, dLevel) {
      this.setWindow({ width: this.window.width + dWidth, level: this.window.level + dLevel });
    }

    setFull(full) {
      this.full = full;
      this.resetZoom();
    }

    // Zoom by `factor` keeping the image point under (fx, fy), fractions of the canvas box, in place.
    zoomBy(factor, fx = 0.5, fy = 0.5) {
      const [top, left, bottom, right] = this.region();
      const point = [top + fy * (bottom - top), left + fx * (right - left)];
      const zoom = Math.min(MAX_ZOOM, Math.max(1, this.zoom * factor));
      const shrink = this.zoom / zoom;
      this.centre = [point[0] + ((top + bottom) / 2 - point[0]) * shrink,
        point[1] + ((left + right) / 2 - point[1]) * shrink];
      this.zoom = zoom;
      this.draw();
    }

    // Pan by a fraction of the visible region (positive: show what lies right / below).
    panBy(fx, fy) {
      const [top, left, bottom, right] = this.region();
      this.centre = [(top + bottom) / 2 + fy * (bottom - top), (left + right) / 2 + fx * (right - left)];
      this.draw();
    }

    resetZoom() {
      this.zoom = 1;
      this.centre = null;
      this.draw();
    }

    // Show the image of another view, as it is set there (the enlarged view of a card).
    mirror(other) {
      this.grey = other.grey;
      this.size = other.size;
      this.crop = other.crop;
      this.canvas.dataset.src = other.canvas.dataset.src;
      this.window = { ...other.window };
      this.full = other.full;
      this.resetZoom();
    }
  }

  function lookupTable({ width, level }) {
    const lut = new Uint8ClampedArray(256);
    const low = level - width / 2;
    for (let v = 0; v < 256; v += 1) lut[v] = Math.round(((v - low) / width) * 255);
    return lut;
  }

  // Window/level for a group of views: right-drag on any of them (Shift: only that one) and the keys
  // [ ] (contrast), , . (brightness), R (reset), F (full field of view); Shift+key: the focused view only.
  class WindowLevel {
    constructor(container, views, focusedView) {
      this.views = views; // () => ImageView[]
      this.focusedView = focusedView; // () => ImageView | null
      this.drag = null;
      container.addEventListener("contextmenu", (event) => {
        if (event.target.closest("canvas")) event.preventDefault();
      });
      container.addEventListener("pointerdown", (event) => this.startDrag(event));
      container.addEventListener("pointermove", (event) => this.moveDrag(event));
      container.addEventListener("pointerup", (event) => this.endDrag(event));
      container.addEventListener("pointercancel", (event) => this.endDrag(event));
    }

    targets(view, onlyOne) {
      return onlyOne ? (view ? [view] : []) : this.views();
    }

    startDrag(event) {
      const canvas = event.target.closest("canvas");
      if (event.button !== 2 || !canvas) return;
      const view = this.views().find((v) => v.canvas === canvas);
      if (!view) return;
      event.preventDefault();
      event.stopPropagation();
      canvas.setPointerCapture(event.pointerId);
      this.drag = { x: event.clientX, y: event.clientY, targets: this.targets(view, event.shiftKey),
        start: this.targets(view, event.shiftKey).map((v) => ({ ...v.window })) };
    }

    moveDrag(event) {
      if (!this.drag) return;
      const dx = event.clientX - this.drag.x;
      const dy = event.clientY - this.drag.y;
      this.drag.targets.forEach((view, i) => {
        const start = this.drag.start[i];
        view.setWindow({ width: start.width + dx, level: start.level - dy / 2 });
      });
    }

    endDrag(event) {
      if (!this.drag) return;
      this.drag = null;
      const canvas = event.target.closest && event.target.closest("canvas");
      if (canvas && canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    }

    // Returns true when the key was a window/level key (the caller then stops handling it).
    handleKey(event) {
      if (event.ctrlKey || event.metaKey || event.altKey) return false;
      const steps = { BracketLeft: [24, 0], BracketRight: [-24, 0], Comma: [0, -12], Period: [0, 12] };
      const targets = this.targets(this.focusedView(), event.shiftKey);
      if (steps[event.code]) {
        targets.forEach((view) => view.adjustWindow(...steps[event.code]));
      } else if (event.code === "KeyR") {
        targets.forEach((view) => { view.setWindow(DEFAULT_WINDOW); view.resetZoom(); });
      } else if (event.code === "KeyF") {
        const full = !targets.every((view) => view.full);
        targets.forEach((view) => view.setFull(full));
      } else {
        return false;
      }
      event.preventDefault();
      return true;
    }
  }

  // Zoom (wheel, + / -, 0) and pan (left-drag, arrow keys) on one view.
  function zoomAndPan(view, element) {
    let pan = null;
    element.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = view.canvas.getBoundingClientRect();
      view.zoomBy(event.deltaY < 0 ? 1.25 : 0.8, (event.clientX - box.left) / box.width,
        (event.clientY - box.top) / box.height);
    }, { passive: false });
    element.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || view.zoom === 1) return;
      pan = { x: event.clientX, y: event.clientY, moved: false };
      element.setPointerCapture(event.pointerId);
    });
    element.addEventListener("pointermove", (event) => {
      if (!pan) return;
      const box = view.canvas.getBoundingClientRect();
      const dx = event.clientX - pan.x;
      const dy = event.clientY - pan.y;
      if (Math.abs(dx) + Math.abs(dy) < 2) return;
      view.panBy(-dx / box.width, -dy / box.height);
      pan = { x: event.clientX, y: event.clientY, moved: true };
    });
    const stop = (event) => {
      if (pan && pan.moved) event.stopPropagation();
      pan = null;
    };
    element.addEventListener("pointerup", stop, true);
    element.addEventListener("pointercancel", stop, true);
    return (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return false;
      const keys = {
        "+": () => view.zoomBy(1.25), "=": () => view.zoomBy(1.25), "-": () => view.zoomBy(0.8),
        0: () => view.resetZoom(),
        ArrowLeft: () => view.panBy(-0.1, 0), ArrowRight: () => view.panBy(0.1, 0),
        ArrowUp: () => view.panBy(0, -0.1), ArrowDown: () => view.panBy(0, 0.1),
      };
      if (!keys[event.key] || (event.key.startsWith("Arrow") && view.zoom === 1)) return false;
      event.preventDefault();
      keys[event.key]();
      return true;
    };
  }

  return { ImageView, WindowLevel, zoomAndPan, DEFAULT_WINDOW };
})();
