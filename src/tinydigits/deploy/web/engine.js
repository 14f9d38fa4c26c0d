// The models in the browser: a few plain JavaScript kernels (fp32 tensors, products summed in
// doubles), enough for tinydigits' networks once BatchNorm is folded away at export:
// conv (any square kernel, stride and zero padding), ReLU, per-channel affine, 2x2 max pool,
// global average pool, then log-softmax. A model is the JSON document static_site.py writes
// (models/<name>.json): its layers, each tensor as base64 little-endian float32.
"use strict";

window.tinydigitsEngine = (() => {
  const MEAN = Math.fround(0.1307);
  const STD = Math.fround(0.3081);

  function floats(text) {
    if (text === null || text === undefined) return null;
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }

  // A model document (parsed JSON) -> a model the kernels run.
  function load(document) {
    if (!document || document.format !== "tinydigits-js-1" || !Array.isArray(document.layers)) {
      throw new Error("not a tinydigits model file for this page (format tinydigits-js-1)");
    }
    const layers = document.layers.map((layer) => {
      if (layer.op === "conv") return { ...layer, weight: floats(layer.weight), bias: floats(layer.bias) };
      if (layer.op === "affine") return { ...layer, scale: floats(layer.scale), shift: floats(layer.shift) };
      if (["relu", "maxpool", "gap"].includes(layer.op)) return layer;
      throw new Error(`unknown layer ${layer.op}`);
    });
    return { name: document.model, layers };
  }

  // im2col: every (input channel, ky, kx) row of the output-sized planes it reads, zero
  // where the kernel hangs over the border; then each output plane is a sum of those rows
  // times one weight each, long contiguous loops a JIT compiles well.
  function conv(x, c, h, w, layer, work) {
    const { out: o, kernel: k, stride: s, padding: p, weight, bias } = layer;
    const oh = Math.floor((h + 2 * p - k) / s) + 1;
    const ow = Math.floor((w + 2 * p - k) / s) + 1;
    const plane = oh * ow;
    const rows = c * k * k;
    let cols = x;
    if (k !== 1 || s !== 1 || p !== 0) {
      if (work.cols.length < rows * plane) work.cols = new Float32Array(rows * plane);
      cols = work.cols;
      cols.fill(0, 0, rows * plane);
      for (let ic = 0; ic < c; ic++) {
        for (let ky = 0; ky < k; ky++) {
          const y0 = Math.max(0, Math.ceil((p - ky) / s));
          const y1 = Math.min(oh - 1, Math.floor((h - 1 + p - ky) / s));
          for (let kx = 0; kx < k; kx++) {
            const x0 = Math.max(0, Math.ceil((p - kx) / s));
            const x1 = Math.min(ow - 1, Math.floor((w - 1 + p - kx) / s));
            const to = ((ic * k + ky) * k + kx) * plane;
            for (let oy = y0; oy <= y1; oy++) {
              const from = ic * h * w + (oy * s + ky - p) * w + kx - p;
              for (let ox = x0; ox <= x1; ox++) cols[to + oy * ow + ox] = x[from + ox * s];
            }
          }
        }
      }
    }
    if (work.sum.length < plane) work.sum = new Float64Array(plane);
    const sum = work.sum;
    const y = new Float32Array(o * plane);
    for (let oc = 0; oc < o; oc++) {
      sum.fill(0, 0, plane);
      for (let r = 0; r < rows; r++) {
        const wv = weight[oc * rows + r];
        const at = r * plane;
        for (let i = 0; i < plane; i++) sum[i] += wv * cols[at + i];
      }
      const b = bias[oc];
      const to = oc * plane;
      for (let i = 0; i < plane; i++) y[to + i] = sum[i] + b;
    }
    return [y, o, oh, ow];
  }

  function maxpool(x, c, h, w) {
    const oh = Math.floor(h / 2);
    const ow = Math.floor(w / 2);
    const y = new Float32Array(c * oh * ow);
    for (let ch = 0; ch < c; ch++) {
      for (let oy = 0; oy < oh; oy++) {
        for (let ox = 0; ox < ow; ox++) {
          const i = ch * h * w + 2 * oy * w + 2 * ox;
          y[(ch * oh + oy) * ow + ox] = Math.max(x[i], x[i + 1], x[i + w], x[i + w + 1]);
        }
      }
    }
    return [y, c, oh, ow];
  }

  function newWork() {
    return { cols: new Float32Array(0), sum: new Float64Array(0) };
  }

  // Log-probabilities (Float64Array of 10) of one 28x28 picture given as uint8 (white on black,
  // as MNIST), normalized as in training: (v / 255 - mean) / std, in fp32.
  function run(model, pixels, work = newWork()) {
    let x = new Float32Array(pixels.length);
    for (let i = 0; i < pixels.length; i++) x[i] = Math.fround(Math.fround(Math.fround(pixels[i] / 255) - MEAN) / STD);
    let c = 1;
    let h = 28;
    let w = 28;
    for (const layer of model.layers) {
      if (layer.op === "conv") {
        [x, c, h, w] = conv(x, c, h, w, layer, work);
      } else if (layer.op === "relu") {
        for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0;
      } else if (layer.op === "affine") {
        const plane = h * w;
        for (let ch = 0; ch < c; ch++) {
          const a = layer.scale ? layer.scale[ch] : 1;
          const b = layer.shift ? layer.shift[ch] : 0;
          for (let i = ch * plane; i < (ch + 1) * plane; i++) x[i] = x[i] * a + b;
        }
      } else if (layer.op === "maxpool") {
        [x, c, h, w] = maxpool(x, c, h, w);
      } else if (layer.op === "gap") {
        const plane = h * w;
        const y = new Float32Array(c);
        for (let ch = 0; ch < c; ch++) {
          let s = 0;
          for (let i = ch * plane; i < (ch + 1) * plane; i++) s += x[i];
          y[ch] = s / plane;
        }
        [x, h, w] = [y, 1, 1];
      }
    }
    let top = -Infinity;
    for (const v of x) top = Math.max(top, v);
    let total = 0;
    for (const v of x) total += Math.exp(v - top);
    const log = Math.log(total);
    return Float64Array.from(x, (v) => v - top - log);
  }

  // Log-probabilities of `count` pictures of 784 bytes each, one after the other (the tests
  // feed the 10,000 MNIST test images through this): a Float32Array of count x 10.
  function runMany(model, bytes, count) {
    const out = new Float32Array(count * 10);
    const work = newWork();
    for (let n = 0; n < count; n++) out.set(run(model, bytes.subarray(n * 784, (n + 1) * 784), work), n * 10);
    return out;
  }

  return { load, run, runMany };
})();
