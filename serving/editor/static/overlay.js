// How the map is drawn over the picture, in the style the expert chose, into the RGBA pixels of the overlay
// (the working map's size; the canvas lays it over the picture at the View's opacity).
//
// - colours: the jet colour map everywhere. The finest reading of values, but it tints every pixel, so a colour
//   photograph's own colours are lost under it.
// - outline: lines where the map crosses a quarter, a half and three quarters, each in that value's jet colour
//   with a dark edge (readable on light and dark, plain and busy pictures), and nothing between the lines: the
//   picture keeps its colours.
// - hue: one colour (magenta, rare in photographs) whose opacity follows the map: attention reads as a glow, and
//   where the map is 0 the picture is untouched.
//
// In every style, what the expert has not decided is drawn faded. Outline and hue leave the picture as it is where
// the map is low, so an Ignore stroke there would not show: they also draw the edge of what the expert decided,
// as a dashed black and white line (the way image editors show a selection).
import { clamp01, JET } from "./maps.js";

export const MAP_STYLES = ["colours", "outline", "hue"];
const OUTLINE_LEVELS = [0.25, 0.5, 0.75];
const FADED = 110; // alpha (of 255) of pixels the expert has not decided
const FADED_LINE = 170; // ...and of the outline's lines there: thin lines need more to be seen
const HUE = [255, 0, 255];
const HALO = 20; // the grey of an outline's dark edge

// pixels: the overlay's RGBA bytes; src: the map (W*H); decided: 1 where decided; all: every pixel decided.
export function drawOverlay(style, pixels, src, decided, all, W, H) {
  if (style !== "outline" && style !== "hue") { colours(pixels, src, decided, all, W * H); return; }
  if (style === "outline") outline(pixels, src, decided, all, W, H);
  else hue(pixels, src, decided, all, W * H);
  if (!all) decidedEdge(pixels, decided, W, H);
}

// Lines 2r + 1 working pixels wide: one up to a longer side of 400, about 1/130 of it beyond.
const lineRadius = (W, H) => Math.floor(Math.max(W, H) / 400);

function colours(d, src, decided, all, n) {
  for (let i = 0; i < n; i++) {
    const c = Math.round(clamp01(src[i]) * 255) * 3, j = i * 4;
    d[j] = JET[c]; d[j + 1] = JET[c + 1]; d[j + 2] = JET[c + 2];
    d[j + 3] = all || decided[i] ? 255 : FADED;
  }
}

function hue(d, src, decided, all, n) {
  for (let i = 0; i < n; i++) {
    const j = i * 4;
    d[j] = HUE[0]; d[j + 1] = HUE[1]; d[j + 2] = HUE[2];
    d[j + 3] = Math.round(clamp01(src[i]) * (all || decided[i] ? 255 : FADED));
  }
}

// The lines, and a dark edge of one pixel around them.
function outline(d, src, decided, all, W, H) {
  const n = W * H, band = new Uint8Array(n), line = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let b = 0;
    for (const level of OUTLINE_LEVELS) if (src[i] >= level) b++;
    band[i] = b;
  }
  // Where two neighbours lie on either side of a level, the line is on the higher one (inside the region at or
  // above the level); a step across several levels draws the highest.
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      if (x + 1 < W && band[i + 1] !== band[i]) mark(line, band, i, i + 1);
      if (y + 1 < H && band[i + W] !== band[i]) mark(line, band, i, i + W);
    }
  }
  const lines = dilate(line, W, H, lineRadius(W, H));
  const edged = dilate(lines, W, H, 1);
  for (let i = 0; i < n; i++) {
    const j = i * 4, level = lines[i], alpha = all || decided[i] ? 255 : FADED_LINE;
    if (level) {
      const c = Math.round(OUTLINE_LEVELS[level - 1] * 255) * 3;
      d[j] = JET[c]; d[j + 1] = JET[c + 1]; d[j + 2] = JET[c + 2]; d[j + 3] = alpha;
    } else {
      d[j] = HALO; d[j + 1] = HALO; d[j + 2] = HALO; d[j + 3] = edged[i] ? alpha : 0;
    }
  }
}

// Decided pixels beside an undecided one, dashed along the diagonals.
function decidedEdge(d, decided, W, H) {
  const edge = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      if (decided[i] && ((x > 0 && !decided[i - 1]) || (x + 1 < W && !decided[i + 1]) ||
          (y > 0 && !decided[i - W]) || (y + 1 < H && !decided[i + W]))) edge[i] = 1;
    }
  }
  const r = lineRadius(W, H), wide = dilate(edge, W, H, r), dash = 2 + r;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x, j = i * 4;
      if (!wide[i]) continue;
      const v = ((x + y) >> dash) & 1 ? 255 : 0;
      d[j] = v; d[j + 1] = v; d[j + 2] = v; d[j + 3] = 255;
    }
  }
}

function mark(line, band, i, k) {
  const high = band[i] > band[k] ? i : k;
  line[high] = Math.max(line[high], band[high]);
}

// The largest value within r pixels (a square), row by row and then column by column.
function dilate(a, W, H, r) {
  if (r <= 0) return a;
  const rows = new Uint8Array(a.length), out = new Uint8Array(a.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let m = 0;
      for (let k = Math.max(0, x - r), e = Math.min(W - 1, x + r); k <= e; k++) if (a[y * W + k] > m) m = a[y * W + k];
      rows[y * W + x] = m;
    }
  }
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let m = 0;
      for (let k = Math.max(0, y - r), e = Math.min(H - 1, y + r); k <= e; k++) if (rows[k * W + x] > m) m = rows[k * W + x];
      out[y * W + x] = m;
    }
  }
  return out;
}
