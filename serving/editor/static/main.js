// Attention editor: the page a domain expert uses to correct an Attention Branch Network's attention map by
// painting. Plain ES2020 modules, served as they are (no build step, no dependencies); this one is the entry
// (index.html loads it as <script type="module">): it wires the others and starts the page.
//
// A correction says what the expert decided and only that: every stroke marks the pixels under its circle as
// decided (S.decided); the rest stays "don't care". Clear and Reset decide the whole map; "The map is right"
// confirms the model's map as it is. Nothing can be submitted before one of these, nor before the expert chose
// the class.
//
// The folder's modules, in layers: a module imports only from its own layer or a lower one, never in a cycle, and
// layer 1 imports nothing, so that the gateway's calls and the map maths stand alone and painting never
// depends on the work with the gateway. Imports are named, from "./name.js"; every export is imported
// somewhere. tests/test_editor_modules.py checks the imports against this list.
//
// layer 1 base: api.js maps.js state.js elements.js
// layer 2 page: messages.js overlay.js render.js controls.js scores.js
// layer 3 picture: history.js brush.js box.js zoom.js contrast.js tools.js stage.js classes.js
// layer 4 work: progress.js queue.js lease.js item.js claims.js correction.js upload.js mine.js session.js
// layer 5 entry: keys.js hooks.js main.js models.js
//
// 1: every call to the gateway (api); map maths, and a map and its mask as the API takes them (maps); the
//    shared state; the page's elements.
// 2: messages and questions; the map's styles (overlay); the canvas and the View options (render); which buttons
//    work (controls); scores.
// 3: the undo history, the brush and the ignore box; zoom and pan; window and level (contrast); the tool and
//    brush size (tools); the pointer on the picture (stage); the class.
// 4: the progress line; the queue and its filters; the claim's lease; the open item; claiming; try, submit
//    and skip (correction); the expert's own image (upload); "My corrections" (mine); the expert and the
//    models (session).
// 5: keyboard shortcuts (keys); the hooks tests drive the page by; this module, which wires the others; the
//    Models page's own entry (models.js, loaded by models.html).
import { wireClaims } from "./claims.js";
import { wireClasses } from "./classes.js";
import { wireContrast } from "./contrast.js";
import { wireCorrection } from "./correction.js";
import { wireHistory } from "./history.js";
import { exposeTestHooks } from "./hooks.js";
import { closeItem, wireItem } from "./item.js";
import { wireKeys } from "./keys.js";
import { wireLease } from "./lease.js";
import { wireMessages } from "./messages.js";
import { wireMine } from "./mine.js";
import { refreshDone } from "./progress.js";
import { refreshQueue, wireQueue } from "./queue.js";
import { wireView } from "./render.js";
import { loadMe, loadModels, wireSession } from "./session.js";
import { wireStage } from "./stage.js";
import { wireTools } from "./tools.js";
import { wireUpload } from "./upload.js";
import { wireZoom } from "./zoom.js";

wireMessages();
wireZoom();
wireStage();
wireTools();
wireView();
wireHistory();
wireContrast();
wireClasses();
wireItem();
wireLease();
wireQueue();
wireClaims();
wireMine();
wireCorrection();
wireUpload();
wireKeys();
wireSession();
exposeTestHooks();

closeItem();
loadMe();
loadModels().then(() => refreshQueue(false));
refreshDone();
