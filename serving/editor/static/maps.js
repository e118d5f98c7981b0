// Map maths, with no page: the working map's size, resampling between the model's resolution and the working
// one, the colours a map is shown in, and a map and its decided mask as the API takes them.

const WORK_MIN_SIDE = 256; // the working map's longest side: at least this (small images are painted finer)
const WORK_MAX_SIDE = 1024; // ...and at most this (the API's largest map)

export const clamp01 = (v) => (v < 0 ? 0 : v > 1 ? 1 : v);

export function workingSize(iw, ih) {
  const long = Math.max(iw, ih);
  const f = Math.min(WORK_MAX_SIDE, Math.max(WORK_MIN_SIDE, long)) / long;
  return [Math.max(2, Math.round(iw * f)), Math.max(2, Math.round(ih * f))];
}

// The model's map from an API answer ({height, width, values}), values clamped to [0, 1]; null if malformed.
export function modelAttention(att) {
  const h = att && Number(att.height), w = att && Number(att.width), values = att && att.values;
  if (Number.isInteger(h) && Number.isInteger(w) && h > 0 && w > 0 && values && values.length === h * w) {
    return { h, w, values: Float32Array.from(values, (v) => clamp01(Number(v) || 0)) };
  }
  return null;
}

// Bilinear upsampling (pixel centres aligned, edges clamped).
export function bilinear(src, sw, sh, dw, dh) {
  const out = new Float32Array(dw * dh);
  for (let y = 0; y < dh; y++) {
    const sy = Math.min(Math.max(((y + 0.5) * sh) / dh - 0.5, 0), sh - 1);
    const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, sh - 1), fy = sy - y0;
    for (let x = 0; x < dw; x++) {
      const sx = Math.min(Math.max(((x + 0.5) * sw) / dw - 0.5, 0), sw - 1);
      const x0 = Math.floor(sx), x1 = Math.min(x0 + 1, sw - 1), fx = sx - x0;
      const top = src[y0 * sw + x0] * (1 - fx) + src[y0 * sw + x1] * fx;
      const bot = src[y1 * sw + x0] * (1 - fx) + src[y1 * sw + x1] * fx;
      out[y * dw + x] = clamp01(top * (1 - fy) + bot * fy);
    }
  }
  return out;
}

// For an area average from n inputs to m outputs: for each output, the inputs it covers and their weights.
function areaWeights(n, m) {
  const scale = n / m, rows = [];
  for (let o = 0; o < m; o++) {
    const a = o * scale, b = (o + 1) * scale, row = [];
    for (let i = Math.floor(a); i < Math.min(n, Math.ceil(b)); i++) {
      const overlap = Math.min(b, i + 1) - Math.max(a, i);
      if (overlap > 1e-9) row.push(i, overlap / scale);
    }
    rows.push(row);
  }
  return rows;
}

// Area average of the working map down to the model's resolution.
export function areaDown(src, sw, sh, dw, dh) {
  const wx = areaWeights(sw, dw), wy = areaWeights(sh, dh);
  const tmp = new Float32Array(sh * dw);
  for (let y = 0; y < sh; y++) {
    for (let o = 0; o < dw; o++) {
      const row = wx[o];
      let s = 0;
      for (let k = 0; k < row.length; k += 2) s += src[y * sw + row[k]] * row[k + 1];
      tmp[y * dw + o] = s;
    }
  }
  const out = new Float32Array(dh * dw);
  for (let o = 0; o < dh; o++) {
    const row = wy[o];
    for (let x = 0; x < dw; x++) {
      let s = 0;
      for (let k = 0; k < row.length; k += 2) s += tmp[row[k] * dw + x] * row[k + 1];
      out[o * dw + x] = clamp01(s);
    }
  }
  return out;
}

// Nearest-neighbour blocks from the model's resolution back up to the working size.
export function blocksUp(src, sw, sh, dw, dh) {
  const out = new Float32Array(dw * dh);
  for (let y = 0; y < dh; y++) {
    const sy = Math.min(sh - 1, Math.floor((y * sh) / dh));
    for (let x = 0; x < dw; x++) out[y * dw + x] = src[sy * sw + Math.min(sw - 1, Math.floor((x * sw) / dw))];
  }
  return out;
}

// Jet-like colour map: blue (0) → cyan → yellow → red (1).
export const JET = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    lut[i * 3] = clamp01(Math.min(4 * v - 1.5, -4 * v + 4.5)) * 255;
    lut[i * 3 + 1] = clamp01(Math.min(4 * v - 0.5, -4 * v + 3.5)) * 255;
    lut[i * 3 + 2] = clamp01(Math.min(4 * v + 0.5, -4 * v + 2.5)) * 255;
  }
  return lut;
})();

// ---------------------------------------------------------- as the API takes them
const round3 = (v) => Math.round(v * 1000) / 1000;

// A map as the API takes it, its values rounded to three decimals.
export const mapJson = (height, width, values) => ({ height, width, values: Array.from(values, round3) });

// The decided mask (a Uint8Array of 0 and 1, row by row) as base64.
export function maskBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
