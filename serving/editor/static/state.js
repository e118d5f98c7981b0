// The editor's state, shared by its modules: the open item, its maps and the expert's decisions, the tools,
// the view. Modules read and change it in place; nothing here touches the page.

export const S = {
  models: [], // [{name, classes}]
  item: null, // the open item (see openItem in item.js)
  iw: 0, ih: 0, // the image's size
  W: 0, H: 0, // the working map's size; k = W / iw working pixels per image pixel
  mh: 0, mw: 0, // the model's map size
  modelUp: null, // Float32Array W*H: the model's map, bilinear-upsampled
  map: null, // Float32Array W*H: the working map
  decided: null, // Uint8Array W*H: 1 where the expert decided the value
  decidedAny: false,
  confirmed: false, // "The map is right" pressed
  label: null, // the class the expert chose; null until they choose
  undo: [], redo: [], maxUndo: 50,
  stroke: null, box: null, pan: null,
  tool: "attend", sizeIndex: 10, edge: "soft", sizeFor: {},
  mapStyle: "colours", // how the map is drawn: one of overlay.js's MAP_STYLES
  zoom: 1, fit: 1,
  spaceDown: false, overStage: false,
  grey: null, // Uint8Array W*H of a greyscale picture's values, for window/level; null for colour
  busy: { open: false, submit: false, tryIt: false, skip: false, reclaim: false },
  openSeq: 0,
  base: document.createElement("canvas"), // the picture at the working size, contrast applied
  overlay: document.createElement("canvas"),
  overlayData: null,
  renderQueued: false,
  left: null, doneToday: null,
};
