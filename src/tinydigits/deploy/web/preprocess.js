// MNIST framing of a picture, in the browser: a port of tinydigits.preprocess.to_mnist (and of
// ink_map, which read_number shares) with the same steps in the same order: the picture
// box-reduced to at most 512 px a side as Image.reduce does it (integer rounding included),
// grayscale in doubles rounded to fp32 once, transparency resolved, the paper's lighting
// fitted (a robust quadratic surface: NumPy's pairwise sums and medians, the same 6x6
// Gaussian elimination), polarity detected, ink levels set (NumPy's fp32 quantile and
// median), specks dropped, crop to the ink, thin strokes thickened, Pillow's Lanczos resize
// into 20x20, centre of mass at the centre of 28x28 by whole pixels, rounded to bytes.
// NumPy's fp32 arithmetic is mirrored with Math.fround where it decides a pixel; Python's
// round() and NumPy's round half to even, so this does too. Not mirrored: a JPEG that Python
// decodes in draft mode (1/2, 1/4, 1/8 scale in the decoder) is decoded the same way by the page
// where the browser has WebCodecs' ImageDecoder (the same pixels), else at full size and
// box-averaged by the same factor here (close, not bit-exact); 16-bit and palette pictures
// arrive here as the browser's 8-bit RGBA.
"use strict";

window.tinydigitsPreprocess = (() => {
  const BOX = 20;
  const SIZE = 28;
  const CENTRE = 14.0;
  const WORK_SIDE = 512;
  const f32 = Math.fround;

  class PreprocessError extends Error {
    constructor(message) {
      super(message);
      this.status = 422; // as the API answers a picture with no ink
    }
  }

  // Python's round(): half to even.
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // NumPy's sum of a float64 array: pairwise, blocks of 128 summed in 8 lanes.
  function pairwise(a, lo, n) {
    if (n < 8) {
      let r = 0;
      for (let i = 0; i < n; i++) r += a[lo + i];
      return r;
    }
    if (n <= 128) {
      let r0 = a[lo]; let r1 = a[lo + 1]; let r2 = a[lo + 2]; let r3 = a[lo + 3];
      let r4 = a[lo + 4]; let r5 = a[lo + 5]; let r6 = a[lo + 6]; let r7 = a[lo + 7];
      let i = 8;
      for (; i < n - (n % 8); i += 8) {
        const j = lo + i;
        r0 += a[j]; r1 += a[j + 1]; r2 += a[j + 2]; r3 += a[j + 3];
        r4 += a[j + 4]; r5 += a[j + 5]; r6 += a[j + 6]; r7 += a[j + 7];
      }
      let res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
      for (; i < n; i++) res += a[lo + i];
      return res;
    }
    let n2 = Math.floor(n / 2);
    n2 -= n2 % 8;
    return pairwise(a, lo, n2) + pairwise(a, lo + n2, n - n2);
  }

  // The same for a float32 array, every addition rounded to fp32 as NumPy's are.
  function pairwise32(a, lo, n) {
    if (n < 8) {
      let r = 0;
      for (let i = 0; i < n; i++) r = f32(r + a[lo + i]);
      return r;
    }
    if (n <= 128) { // eight lanes in locals: this runs on every pixel of the picture
      let r0 = a[lo]; let r1 = a[lo + 1]; let r2 = a[lo + 2]; let r3 = a[lo + 3];
      let r4 = a[lo + 4]; let r5 = a[lo + 5]; let r6 = a[lo + 6]; let r7 = a[lo + 7];
      let i = 8;
      for (; i < n - (n % 8); i += 8) {
        const j = lo + i;
        r0 = f32(r0 + a[j]); r1 = f32(r1 + a[j + 1]); r2 = f32(r2 + a[j + 2]); r3 = f32(r3 + a[j + 3]);
        r4 = f32(r4 + a[j + 4]); r5 = f32(r5 + a[j + 5]); r6 = f32(r6 + a[j + 6]); r7 = f32(r7 + a[j + 7]);
      }
      let res = f32(f32(f32(r0 + r1) + f32(r2 + r3)) + f32(f32(r4 + r5) + f32(r6 + r7)));
      for (; i < n; i++) res = f32(res + a[lo + i]);
      return res;
    }
    let n2 = Math.floor(n / 2);
    n2 -= n2 % 8;
    return f32(pairwise32(a, lo, n2) + pairwise32(a, lo + n2, n - n2));
  }

  const sum64 = (a) => pairwise(a, 0, a.length);
  const sum32 = (a) => pairwise32(a, 0, a.length);

  // The k-th smallest of values (Hoare's quickselect; the array is reordered).
  function select(values, k, lo = 0, hi = values.length - 1) {
    while (hi > lo) {
      const pivot = values[(lo + hi) >> 1];
      let i = lo;
      let j = hi;
      while (i <= j) {
        while (values[i] < pivot) i++;
        while (values[j] > pivot) j--;
        if (i <= j) {
          const t = values[i];
          values[i] = values[j];
          values[j] = t;
          i++;
          j--;
        }
      }
      if (k <= j) hi = j;
      else if (k >= i) lo = i;
      else return values[k];
    }
    return values[k];
  }

  // np.median of float64 values (the array is reordered).
  function median64(values) {
    const n = values.length;
    const upper = select(values, n >> 1);
    if (n % 2) return upper;
    let lower = -Infinity; // the largest of the lower half, which select left before n / 2
    for (let i = 0; i < n >> 1; i++) if (values[i] > lower) lower = values[i];
    return (lower + upper) / 2;
  }

  // np.median of float32 values: the mean of the middle two in fp32.
  function median32(sorted) {
    const n = sorted.length;
    return n % 2 ? sorted[(n - 1) / 2] : f32(f32(sorted[n / 2 - 1] + sorted[n / 2]) / 2);
  }

  // np.quantile (linear) of sorted float32 values, in fp32 as NumPy computes it.
  function quantile32(sorted, q) {
    const position = q * (sorted.length - 1);
    const lo = Math.floor(position);
    const hi = Math.min(lo + 1, sorted.length - 1);
    const t = position - lo;
    const a = sorted[lo];
    const b = sorted[hi];
    const diff = f32(b - a);
    return t >= 0.5 ? f32(b - f32(diff * f32(1 - t))) : f32(a + f32(diff * f32(t)));
  }

  // np.quantile (linear) of sorted float64 values.
  function quantile64(sorted, q) {
    const position = q * (sorted.length - 1);
    const lo = Math.floor(position);
    const hi = Math.min(lo + 1, sorted.length - 1);
    const t = position - lo;
    const diff = sorted[hi] - sorted[lo];
    return t >= 0.5 ? sorted[hi] - diff * (1 - t) : sorted[lo] + diff * t;
  }

  // ------------------------------------------------------------ the picture

  // Image.reduce(factor) of 8-bit RGBA: each channel's box average (partial boxes at the
  // right and bottom edges averaged over what they hold), rounded as Pillow's integer code.
  function reduce(image, factor) {
    const { data, width, height } = image;
    const ow = Math.ceil(width / factor);
    const oh = Math.ceil(height / factor);
    const lastWidth = width - (ow - 1) * factor; // the right edge's partial box
    const out = new Uint8ClampedArray(ow * oh * 4);
    const sums = new Uint32Array(ow * 4);
    // A pixel's four bytes in one read (little-endian, as every browser's typed arrays are).
    const pixels = data.byteOffset % 4 === 0 ? new Uint32Array(data.buffer, data.byteOffset, width * height)
      : new Uint32Array(data.slice().buffer);
    // Row by row through memory (a phone's photo is tens of megabytes): each box's row sums
    // gathered per output column, then the averages of a finished row of boxes.
    for (let y = 0; y < oh; y++) {
      sums.fill(0);
      const yEnd = Math.min(height, (y + 1) * factor);
      for (let yy = y * factor; yy < yEnd; yy++) {
        let i = yy * width;
        for (let x = 0; x < ow; x++) {
          const boxWidth = x === ow - 1 ? lastWidth : factor;
          let s0 = 0;
          let s1 = 0;
          let s2 = 0;
          let s3 = 0;
          for (let k = 0; k < boxWidth; k++, i++) {
            const p = pixels[i];
            s0 += p & 255;
            s1 += (p >>> 8) & 255;
            s2 += (p >>> 16) & 255;
            s3 += p >>> 24;
          }
          const o = 4 * x;
          sums[o] += s0;
          sums[o + 1] += s1;
          sums[o + 2] += s2;
          sums[o + 3] += s3;
        }
      }
      const rows = yEnd - y * factor;
      for (let x = 0; x < ow; x++) {
        const n = rows * (x === ow - 1 ? lastWidth : factor);
        const m = Math.trunc(f32(4294967296 / (256 * n)));
        const half = Math.floor(n / 2);
        for (let ch = 0; ch < 4; ch++) out[(y * ow + x) * 4 + ch] = Math.floor(((sums[4 * x + ch] + half) * m) / 16777216);
      }
    }
    return { data: out, width: ow, height: oh };
  }

  // The picture as Python's load_image + _to_gray would see it: `draft` (1, 2, 4 or 8) is the
  // scale a JPEG is decoded at in draft mode (approximated by a box average), then reduced to
  // at most WORK_SIDE a side.
  function workImage(image, draft = 1) {
    let picture = draft > 1 ? reduce(image, draft) : image;
    const factor = Math.ceil(Math.max(picture.width, picture.height) / WORK_SIDE);
    if (factor > 1) picture = reduce(picture, factor);
    return picture;
  }

  // Pillow's JPEG draft scale for a picture of width x height asked for at least 512 px a side.
  function draftScale(width, height) {
    const scale = Math.min(Math.floor(width / WORK_SIDE), Math.floor(height / WORK_SIDE));
    return [8, 4, 2, 1].find((s) => scale >= s);
  }

  // A JPEG's stored width and height from its frame header (SOFn) and its EXIF orientation
  // (1-8; 1 where there is none), read before any decoding; null for anything else or where
  // the header lies beyond `bytes`. Stray bytes between segments are skipped, as libjpeg does.
  function jpegHeader(bytes) {
    if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) return null;
    let orientation = 1;
    let i = 2;
    while (i + 3 < bytes.length) {
      if (bytes[i] !== 0xff || bytes[i + 1] === 0xff) { // junk, or a fill byte before a marker
        i += 1;
        continue;
      }
      const marker = bytes[i + 1];
      if (marker === 0x00 || marker === 0x01 || marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7)) {
        i += 2; // no length follows
        continue;
      }
      const frame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
      if (frame) {
        if (i + 8 >= bytes.length) return null;
        const height = (bytes[i + 5] << 8) | bytes[i + 6];
        const width = (bytes[i + 7] << 8) | bytes[i + 8];
        return width > 0 && height > 0 ? { width, height, orientation } : null;
      }
      if (marker === 0xd9 || marker === 0xda) return null; // image data before any frame header
      const length = (bytes[i + 2] << 8) | bytes[i + 3];
      if (marker === 0xe1) orientation = exifOrientation(bytes, i + 4, i + 2 + length) ?? orientation;
      i += 2 + length;
    }
    return null;
  }

  // The orientation tag (0x0112) of an APP1 segment's EXIF block in bytes[start, end), if any.
  function exifOrientation(bytes, start, end) {
    end = Math.min(end, bytes.length);
    const tiff = start + 6;
    if (tiff + 8 > end || String.fromCharCode(...bytes.subarray(start, start + 4)) !== "Exif") return null;
    const little = bytes[tiff] === 0x49; // "II": Intel byte order; "MM": Motorola
    const u16 = (at) => (little ? bytes[at] | (bytes[at + 1] << 8) : (bytes[at] << 8) | bytes[at + 1]);
    const u32 = (at) => (little ? u16(at) + u16(at + 2) * 65536 : u16(at) * 65536 + u16(at + 2));
    const ifd = tiff + u32(tiff + 4);
    if (ifd + 2 > end) return null;
    for (let k = 0, entry = ifd + 2; k < u16(ifd) && entry + 12 <= end; k++, entry += 12) {
      if (u16(entry) === 0x0112) {
        const value = u16(entry + 8);
        return value >= 1 && value <= 8 ? value : null;
      }
    }
    return null;
  }

  // Luminance in [0, 1] as fp32, from float64 weights (preprocess._to_gray); transparency
  // over white, or over black when the visible content is light (white strokes).
  function gray(image) {
    const { data, width, height } = image;
    const count = width * height;
    const out = new Float32Array(count);
    const g = (i) => (data[4 * i] / 255) * 0.299 + (data[4 * i + 1] / 255) * 0.587 + (data[4 * i + 2] / 255) * 0.114;
    let opaque = true;
    for (let i = 0; i < count; i++) {
      out[i] = g(i); // rounded to fp32 once, as Python's float64 luminance cast to fp32
      if (data[4 * i + 3] !== 255) opaque = false;
    }
    if (opaque) return out;
    const visible = [];
    for (let i = 0; i < count; i++) if (data[4 * i + 3] / 255 > 0.5) visible.push(g(i));
    visible.sort((a, b) => a - b);
    const backdrop = visible.length && quantile64(visible, 0.25) > 0.5 ? 0.0 : 1.0;
    for (let i = 0; i < count; i++) {
      const alpha = data[4 * i + 3] / 255;
      out[i] = g(i) * alpha + backdrop * (1.0 - alpha);
    }
    return out;
  }

  // ------------------------------------------------------- the paper's light

  // matrix x = rhs by Gaussian elimination with partial pivoting (preprocess._solve).
  function solve(matrix, rhs) {
    const n = rhs.length;
    const rows = matrix.map((row, i) => [...row, rhs[i]]);
    let scale = 0;
    for (const row of matrix) for (const v of row) scale = Math.max(scale, Math.abs(v));
    scale = scale || 1.0;
    const pivots = [];
    let r = 0;
    for (let c = 0; c < n; c++) {
      let best = null;
      for (let i = r; i < n; i++) if (best === null || Math.abs(rows[i][c]) > Math.abs(rows[best][c])) best = i;
      if (best === null || Math.abs(rows[best][c]) <= 1e-9 * scale) {
        pivots.push(null);
        continue;
      }
      [rows[r], rows[best]] = [rows[best], rows[r]];
      for (let i = r + 1; i < n; i++) {
        const factor = rows[i][c] / rows[r][c];
        if (factor) rows[i] = rows[i].map((a, k) => a - factor * rows[r][k]);
      }
      pivots.push(r);
      r++;
    }
    const solution = new Array(n).fill(0);
    for (let c = n - 1; c >= 0; c--) {
      const row = pivots[c];
      if (row !== null) {
        let known = 0; // plain left-to-right additions, as preprocess._solve
        for (let k = c + 1; k < n; k++) known += rows[row][k] * solution[k];
        solution[c] = (rows[row][n] - known) / rows[row][c];
      }
    }
    return solution;
  }

  const TERMS = [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]];

  function surfaceAt(coef, x, y) {
    return coef[0] + coef[1] * x + coef[2] * y + coef[3] * (x * x) + coef[4] * (x * y) + coef[5] * (y * y);
  }

  // preprocess._fit_background: the paper's surface (fp32, clipped to [0, 1]), its noise and
  // median brightness, fitted on at most about 8k pixels with the ink rejected as outliers.
  function fitBackground(g, w, h) {
    const step = Math.max(1, Math.trunc(Math.sqrt((h * w) / 8000)));
    const ny = Math.ceil(h / step);
    const nx = Math.ceil(w / step);
    const n = ny * nx;
    const values = new Float64Array(n);
    const xn = new Float64Array(n);
    const yn = new Float64Array(n);
    for (let j = 0; j < ny; j++) {
      for (let i = 0; i < nx; i++) {
        const k = j * nx + i;
        values[k] = g[j * step * w + i * step];
        yn[k] = ((j * step) / Math.max(h - 1, 1)) * 2 - 1;
        xn[k] = ((i * step) / Math.max(w - 1, 1)) * 2 - 1;
      }
    }
    let coef = [median64(Float64Array.from(values)), 0, 0, 0, 0, 0];
    let inliers = new Uint8Array(n).fill(1);
    let sigma = 0;
    let fittedOn = null;
    const residual = new Float64Array(n);
    for (let round = 0; round < 6; round++) {
      let count = 0;
      for (let k = 0; k < n; k++) {
        residual[k] = values[k] - surfaceAt(coef, xn[k], yn[k]);
        if (inliers[k]) count++;
      }
      const absolute = new Float64Array(count);
      for (let k = 0, m = 0; k < n; k++) if (inliers[k]) absolute[m++] = Math.abs(residual[k]);
      sigma = 1.4826 * median64(absolute);
      const limit = Math.max(2.5 * sigma, 0.01);
      inliers = new Uint8Array(n);
      let kept = 0;
      for (let k = 0; k < n; k++) {
        if (Math.abs(residual[k]) <= limit) {
          inliers[k] = 1;
          kept++;
        }
      }
      if (kept < 12) break;
      let same = fittedOn !== null;
      for (let k = 0; same && k < n; k++) same = fittedOn[k] === inliers[k];
      if (same) break;
      fittedOn = inliers;
      const x = new Float64Array(kept);
      const y = new Float64Array(kept);
      const v = new Float64Array(kept);
      for (let k = 0, m = 0; k < n; k++) {
        if (inliers[k]) {
          x[m] = xn[k];
          y[m] = yn[k];
          v[m++] = values[k];
        }
      }
      const powers = (t) => {
        const t2 = new Float64Array(kept);
        const t3 = new Float64Array(kept);
        const t4 = new Float64Array(kept);
        for (let i = 0; i < kept; i++) {
          t2[i] = t[i] * t[i];
          t3[i] = t2[i] * t[i];
          t4[i] = t3[i] * t[i];
        }
        return [new Float64Array(kept).fill(1), t, t2, t3, t4];
      };
      const px = powers(x);
      const py = powers(y);
      const product = new Float64Array(kept);
      const sumOf = (a, b, times) => { // sum of x^a y^b (times v), elementwise in NumPy's order
        const pa = px[a];
        const pb = py[b];
        if (times) for (let i = 0; i < kept; i++) product[i] = pa[i] * pb[i] * times[i];
        else for (let i = 0; i < kept; i++) product[i] = pa[i] * pb[i];
        return sum64(product);
      };
      const moment = [];
      for (let a = 0; a < 5; a++) {
        moment.push([]);
        for (let b = 0; b < 5 - a; b++) moment[a].push(sumOf(a, b, null));
      }
      const gram = TERMS.map(([a, b], i) => TERMS.map(([c, d], j) => moment[a + c][b + d] + (i === j ? 1e-6 : 0.0)));
      const rhs = TERMS.map(([a, b]) => sumOf(a, b, v));
      coef = solve(gram, rhs);
    }
    const surface = new Float32Array(w * h);
    for (let r = 0; r < h; r++) {
      const yy = (r / Math.max(h - 1, 1)) * 2 - 1;
      const rowPart = coef[0] + coef[2] * yy + coef[5] * yy * yy;
      for (let c = 0; c < w; c++) {
        const xx = (c / Math.max(w - 1, 1)) * 2 - 1;
        const value = rowPart + xx * (coef[1] + coef[3] * xx + coef[4] * yy);
        surface[r * w + c] = Math.min(1, Math.max(0, value));
      }
    }
    const onPaper = [];
    for (let k = 0; k < n; k++) if (inliers[k]) onPaper.push(surfaceAt(coef, xn[k], yn[k]));
    const paper = median64(Float64Array.from(onPaper));
    return { surface, sigma, paper };
  }

  // preprocess._ink_map: ink strength in [0, 1] (fp32), polarity detected; throws
  // PreprocessError when no ink stands out.
  // The raw ink and the paper's noise level, for any picture: dark marks on light paper or
  // light marks on dark, whichever stands out more from the fitted surface.
  function rawInk(g, w, h) {
    const { surface, sigma, paper } = fitBackground(g, w, h);
    const count = w * h;
    const residual = new Float32Array(count);
    const margin = f32(Math.max(3 * sigma, 0.02));
    const darkParts = new Float32Array(count);
    const lightParts = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const r = f32(g[i] - surface[i]);
      residual[i] = r;
      darkParts[i] = Math.max(f32(-r - margin), 0);
      lightParts[i] = Math.max(f32(r - margin), 0);
    }
    const floor = f32(0.05);
    const ink = new Float32Array(count);
    if (sum32(darkParts) > sum32(lightParts)) { // dark ink on light paper
      for (let i = 0; i < count; i++) ink[i] = Math.max(-residual[i] / Math.max(surface[i], floor), 0);
      return { ink, noise: sigma / Math.max(paper, 0.05) };
    } // light ink on dark (MNIST itself)
    for (let i = 0; i < count; i++) ink[i] = Math.max(residual[i] / Math.max(f32(1 - surface[i]), floor), 0);
    return { ink, noise: sigma / Math.max(1.0 - paper, 0.05) };
  }

  // The same for paper known to be pure white (the page's pad), in one pass: what rawInk gives
  // for a surface of exactly 1 and no noise (the fit finds just that, as Python's does). With
  // no mark darker than the margin it reads light ink on dark, of which there is none.
  function rawInkOnWhite(g, count) {
    const margin = f32(0.02);
    const ink = new Float32Array(count);
    let dark = false;
    for (let i = 0; i < count; i++) {
      const r = f32(g[i] - 1);
      if (r < 0) ink[i] = -r;
      if (f32(-r - margin) > 0) dark = true;
    }
    return { ink: dark ? ink : new Float32Array(count), noise: 0 };
  }

  function inkMap(g, w, h, white = false) {
    const count = w * h;
    const { ink, noise } = white ? rawInkOnWhite(g, count) : rawInk(g, w, h);
    const low = Math.max(3 * noise, 1.5 / 255);
    const low32 = f32(low);
    const above = new Float32Array(count);
    let n = 0;
    for (let i = 0; i < count; i++) if (ink[i] > low32) above[n++] = ink[i];
    if (!n) throw new PreprocessError("no ink found: the image looks blank");
    const candidates = above.subarray(0, n).sort();
    const top = quantile32(candidates, 0.995);
    if (top < Math.max(6 * noise, 0.1)) {
      throw new PreprocessError("no ink found: the image looks blank (no marks stand out from the paper)");
    }
    const half = f32(0.5 * top);
    const strong = candidates.filter((v) => v > half);
    const high = Math.max(median32(strong), low + 1e-3);
    const span = f32(high - low);
    for (let i = 0; i < count; i++) {
      if (ink[i] !== 0) ink[i] = Math.min(1, Math.max(0, f32(f32(ink[i] - low32) / span))); // 0 stays 0
    }
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
    const cellOfColumn = new Int32Array(width); // per pixel column, its grid column (no division per pixel)
    for (let x = 0; x < width; x++) cellOfColumn[x] = Math.floor(x / f);
    const peak = new Float32Array(gw * gh);
    const mass = new Float64Array(gw * gh);
    for (let y = 0; y < height; y++) {
      const row = Math.floor(y / f) * gw;
      for (let x = 0, i = y * width; x < width; x++, i++) {
        const v = ink[i];
        if (v === 0) continue; // most of a picture: adds nothing to either
        const cell = row + cellOfColumn[x];
        if (v > peak[cell]) peak[cell] = v;
        mass[cell] += v;
      }
    }
    const label = new Int32Array(gw * gh);
    const totals = [0];
    const stack = [];
    for (let start = 0; start < gw * gh; start++) {
      if (label[start] || !(peak[start] > 0.35)) continue;
      const id = totals.length;
      let total = 0;
      stack.push(start);
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
      const row = Math.floor(y / f) * gw;
      for (let x = 0, i = y * width; x < width; x++, i++) {
        if (ink[i] !== 0 && keep[row + cellOfColumn[x]]) out[i] = ink[i];
      }
    }
    return out;
  }

  // Crop a width x height float image to its nonzero pixels: {data, w, h, top, left} (where
  // the crop sits), or null if none.
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
    return { data, w, h, top, left };
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

  // Pillow's resampling filters (Resample.c): the function and its support at scale 1.
  const FILTERS = {
    lanczos: {
      support: 3,
      at(x) {
        const sinc = (t) => (t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t));
        return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
      },
    },
    bilinear: { support: 1, at: (x) => Math.max(0, 1 - Math.abs(x)) },
  };

  // Pillow's resampling weights for one axis (precompute_coeffs in Resample.c).
  function coefficients(inSize, outSize, filter) {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1);
    const support = filter.support * filterScale;
    const ss = 1 / filterScale; // multiplied, not divided, as Pillow does: the same weights to the bit
    const rows = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
      const weights = [];
      let sum = 0;
      for (let x = xmin; x < xmax; x++) {
        const w = filter.at((x - center + 0.5) * ss);
        weights.push(w);
        sum += w;
      }
      rows.push({ xmin, weights: weights.map((w) => (sum !== 0 ? w / sum : w)) });
    }
    return rows;
  }

  // Pillow's Image.resize of a float ("F") image with the LANCZOS (default) or BILINEAR
  // filter: horizontal pass, then vertical, sums in doubles stored as fp32.
  function resize(src, width, height, outW, outH, filterName = "lanczos") {
    const filter = FILTERS[filterName];
    let data = src;
    let w = width;
    if (outW !== width) {
      const kx = coefficients(width, outW, filter);
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
      const ky = coefficients(height, outH, filter);
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

  // preprocess.fit_to_mnist: the 28x28 MNIST-style bytes (white on black, row-major) of an
  // ink map of one digit; throws PreprocessError when it holds no ink.
  function fitToMnist(ink, width, height) {
    const tight = cropToInk(ink, width, height);
    if (!tight) throw new PreprocessError("no ink found: the image looks blank");
    // As Python: a one-pixel border, thickened with the scale of the tight crop, cropped again.
    const paddedW = tight.w + 2;
    const padded = new Float32Array(paddedW * (tight.h + 2));
    for (let y = 0; y < tight.h; y++) padded.set(tight.data.subarray(y * tight.w, (y + 1) * tight.w), (y + 1) * paddedW + 1);
    const thick = thicken(padded, paddedW, tight.h + 2, BOX / Math.max(tight.h, tight.w));
    const { data: cropped, w, h } = cropToInk(thick, paddedW, tight.h + 2);
    const scale = BOX / Math.max(h, w);
    const outW = Math.max(1, roundHalfEven(w * scale));
    const outH = Math.max(1, roundHalfEven(h * scale));
    const small = outW === w && outH === h ? cropped
      : resize(cropped, w, h, outW, outH).map((v) => Math.min(1, Math.max(0, v)));
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
    if (total <= 0) throw new PreprocessError("no ink found: the image looks blank");
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

  // preprocess.ink_map of RGBA pixels ({data, width, height}, as ImageData): {ink, width,
  // height, factor}, the ink map of the work-sized picture and how much smaller it is.
  // `white`: the picture is the page's own pad, whose paper is known to be pure white (the
  // fit would find a surface of exactly 1 and no noise, as Python does): not fitted again.
  function inkOf(image, draft = 1, white = false) {
    const picture = workImage(image, draft);
    const ink = inkMap(gray(picture), picture.width, picture.height, white);
    const side = Math.max(Math.ceil(image.width / draft), Math.ceil(image.height / draft));
    const reduced = Math.ceil(side / WORK_SIDE);
    return { ink, width: picture.width, height: picture.height, factor: draft * Math.max(1, reduced) };
  }

  // preprocess.to_mnist of RGBA pixels: the 28x28 bytes; throws PreprocessError on no ink.
  function toMnist(image, draft = 1, white = false) {
    const { ink, width, height } = inkOf(image, draft, white);
    const clean = removeSpecks(ink, width, height);
    if (!clean) throw new PreprocessError("no ink found: the image looks blank");
    return fitToMnist(clean, width, height);
  }

  return { reduce, toMnist, inkOf, fitToMnist, cropToInk, resize, draftScale, jpegHeader, PreprocessError, roundHalfEven, SIZE };
})();
