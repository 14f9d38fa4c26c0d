// MNIST framing of a drawing, in the browser: a port of tinydigits.preprocess.to_mnist for the
// page's canvas (dark strokes on white). The same steps in the same order: grayscale, ink
// strength (levels as ink_map sets them), specks dropped (remove_specks), crop to the ink,
// strokes thickened when they would come out thinner than MNIST's (_thicken: a digit drawn
// nearly as tall as the pad), scale into a 20x20 box keeping the aspect ratio with Pillow's
// Lanczos filter (ported below), centre of mass at the centre of 28x28 by whole pixels,
// rounded to bytes. Python's round() and numpy's round half to even, so this does too. One
// shortcut, exact for this canvas: the paper is known to be white (Python fits a surface to
// it and finds 1.0).
"use strict";

window.tinydigitsPreprocess = (() => {
  const BOX = 20;
  const SIZE = 28;
  const CENTRE = 14.0;

  // Python's round(): half to even.
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // numpy's quantile with its default (linear) interpolation, of a sorted array.
  function quantileSorted(sorted, q) {
    const position = q * (sorted.length - 1);
    const lo = Math.floor(position);
    const hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (position - lo);
  }

  // Ink strength in [0, 1] from RGBA pixels on white paper (preprocess._ink_map).
  function inkMap(rgba, count) {
    const ink = new Float32Array(count);
    const candidates = [];
    const low = 1.5 / 255; // max(3 * noise, 1.5 / 255) with no paper noise
    for (let i = 0; i < count; i++) {
      const gray = Math.fround(rgba[4 * i] / 255 * 0.299 + rgba[4 * i + 1] / 255 * 0.587 +
        rgba[4 * i + 2] / 255 * 0.114);
      const value = Math.max(0, 1 - gray);
      ink[i] = value;
      if (value > low) candidates.push(value);
    }
    if (!candidates.length) return null;
    candidates.sort((a, b) => a - b);
    const top = quantileSorted(candidates, 0.995);
    if (top < 0.1) return null;
    const strong = candidates.filter((v) => v > 0.5 * top);
    const high = Math.max(quantileSorted(strong, 0.5), low + 1e-3);
    for (let i = 0; i < count; i++) ink[i] = Math.min(1, Math.max(0, (ink[i] - low) / (high - low)));
    return ink;
  }

  // Calls visit(cell) for each of the up to nine cells around `cell` (itself included) of a grid.
  function around(cell, gw, gh, visit) {
    const cy = Math.floor(cell / gw);
    const cx = cell % gw;
    for (let ny = Math.max(cy - 1, 0); ny <= Math.min(cy + 1, gh - 1); ny++) {
      for (let nx = Math.max(cx - 1, 0); nx <= Math.min(cx + 1, gw - 1); nx++) visit(ny * gw + nx);
    }
  }

  // Drop marks far smaller than the digit: 8-connected parts of a coarse grid, kept when
  // they hold at least 3% of the largest part's ink, with a one-cell halo (remove_specks).
  function removeSpecks(ink, width, height) {
    const f = Math.max(1, Math.ceil(Math.max(width, height) / 100));
    const gw = Math.ceil(width / f);
    const gh = Math.ceil(height / f);
    const peak = new Float32Array(gw * gh);
    const mass = new Float64Array(gw * gh);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const v = ink[y * width + x];
        const cell = Math.floor(y / f) * gw + Math.floor(x / f);
        if (v > peak[cell]) peak[cell] = v;
        mass[cell] += v;
      }
    }
    const label = new Int32Array(gw * gh);
    const totals = [0];
    for (let start = 0; start < gw * gh; start++) {
      if (label[start] || !(peak[start] > 0.35)) continue;
      const id = totals.length;
      let total = 0;
      const stack = [start];
      label[start] = id;
      while (stack.length) {
        const cell = stack.pop();
        total += mass[cell];
        around(cell, gw, gh, (next) => {
          if (!label[next] && peak[next] > 0.35) {
            label[next] = id;
            stack.push(next);
          }
        });
      }
      totals.push(total);
    }
    if (totals.length === 1) return null;
    const largest = Math.max(...totals);
    const keep = new Uint8Array(gw * gh);
    for (let cell = 0; cell < gw * gh; cell++) {
      if (label[cell] && totals[label[cell]] >= 0.03 * largest) around(cell, gw, gh, (next) => { keep[next] = 1; });
    }
    const out = new Float32Array(width * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (keep[Math.floor(y / f) * gw + Math.floor(x / f)]) out[y * width + x] = ink[y * width + x];
      }
    }
    return out;
  }

  // Crop a width x height float image to its nonzero pixels: {data, w, h}, or null if none.
  function cropToInk(ink, width, height) {
    let top = height;
    let bottom = -1;
    let left = width;
    let right = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (ink[y * width + x] > 0) {
          top = Math.min(top, y);
          bottom = Math.max(bottom, y);
          left = Math.min(left, x);
          right = Math.max(right, x);
        }
      }
    }
    if (bottom < 0) return null;
    const h = bottom - top + 1;
    const w = right - left + 1;
    const data = new Float32Array(w * h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) data[y * w + x] = ink[(top + y) * width + left + x];
    }
    return { data, w, h };
  }

  // preprocess._thicken: strokes that would be thinner than MIN_STROKE (1.2 px) once scaled
  // by `scale` are dilated (a square max filter, clipped at the border) towards 1.8 px.
  function thicken(ink, w, h, scale) {
    let area = 0;
    let edges = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const solid = ink[y * w + x] > 0.5;
        area += ink[y * w + x];
        if (y + 1 < h && solid !== ink[(y + 1) * w + x] > 0.5) edges++;
        if (x + 1 < w && solid !== ink[y * w + x + 1] > 0.5) edges++;
      }
    }
    if (edges === 0) return ink;
    const width = (2 * area) / edges; // a stroke of width w and length L: area wL, perimeter ~2L
    if (width * scale >= 1.2 || scale > 0.5) return ink;
    const r = Math.max(1, roundHalfEven((1.8 / scale - width) / 2));
    const rows = new Float32Array(w * h); // separable: the max along rows, then along columns
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let m = -Infinity;
        for (let k = Math.max(0, x - r); k <= Math.min(w - 1, x + r); k++) m = Math.max(m, ink[y * w + k]);
        rows[y * w + x] = m;
      }
    }
    const out = new Float32Array(w * h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let m = -Infinity;
        for (let k = Math.max(0, y - r); k <= Math.min(h - 1, y + r); k++) m = Math.max(m, rows[k * w + x]);
        out[y * w + x] = m;
      }
    }
    return out;
  }

  function lanczos(x) {
    const sinc = (t) => (t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t));
    return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
  }

  // Pillow's resampling weights for one axis (precompute_coeffs in Resample.c).
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1);
    const support = 3 * filterScale;
    const rows = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
      const weights = [];
      let sum = 0;
      for (let x = xmin; x < xmax; x++) {
        const w = lanczos((x - center + 0.5) / filterScale);
        weights.push(w);
        sum += w;
      }
      rows.push({ xmin, weights: weights.map((w) => (sum !== 0 ? w / sum : w)) });
    }
    return rows;
  }

  // Pillow's Image.resize(LANCZOS) of a float ("F") image: horizontal pass, then vertical.
  function resize(src, width, height, outW, outH) {
    let data = src;
    let w = width;
    if (outW !== width) {
      const kx = coefficients(width, outW);
      const next = new Float32Array(outW * height);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < outW; x++) {
          let s = 0;
          const { xmin, weights } = kx[x];
          for (let k = 0; k < weights.length; k++) s += data[y * w + xmin + k] * weights[k];
          next[y * outW + x] = s;
        }
      }
      data = next;
      w = outW;
    }
    if (outH !== height) {
      const ky = coefficients(height, outH);
      const next = new Float32Array(w * outH);
      for (let y = 0; y < outH; y++) {
        const { xmin, weights } = ky[y];
        for (let x = 0; x < w; x++) {
          let s = 0;
          for (let k = 0; k < weights.length; k++) s += data[(xmin + k) * w + x] * weights[k];
          next[y * w + x] = s;
        }
      }
      data = next;
    }
    return data;
  }

  // The 28x28 MNIST-style bytes (white on black, row-major) of a canvas's ImageData, or
  // null when it holds no ink.
  function fromImageData(image) {
    const { width, height } = image;
    let ink = inkMap(image.data, width * height);
    if (ink) ink = removeSpecks(ink, width, height);
    if (!ink) return null;
    const tight = cropToInk(ink, width, height);
    if (!tight) return null;
    // As Python: a one-pixel border, thickened with the scale of the tight crop, cropped again.
    const paddedW = tight.w + 2;
    const padded = new Float32Array(paddedW * (tight.h + 2));
    for (let y = 0; y < tight.h; y++) padded.set(tight.data.subarray(y * tight.w, (y + 1) * tight.w), (y + 1) * paddedW + 1);
    const thick = thicken(padded, paddedW, tight.h + 2, BOX / Math.max(tight.h, tight.w));
    const { data: cropped, w, h } = cropToInk(thick, paddedW, tight.h + 2);
    const scale = BOX / Math.max(h, w);
    const outW = Math.max(1, roundHalfEven(w * scale));
    const outH = Math.max(1, roundHalfEven(h * scale));
    const small = resize(cropped, w, h, outW, outH).map((v) => Math.min(1, Math.max(0, v)));
    let total = 0;
    let my = 0;
    let mx = 0;
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const v = small[y * outW + x];
        total += v;
        my += v * y;
        mx += v * x;
      }
    }
    if (total <= 0) return null;
    const offsetY = Math.min(Math.max(roundHalfEven(CENTRE - my / total), 0), SIZE - outH);
    const offsetX = Math.min(Math.max(roundHalfEven(CENTRE - mx / total), 0), SIZE - outW);
    const out = new Uint8Array(SIZE * SIZE);
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        out[(offsetY + y) * SIZE + offsetX + x] = roundHalfEven(small[y * outW + x] * 255);
      }
    }
    return out;
  }

  return { fromImageData, SIZE };
})();
