// The realtime map page in Debian's Chromium (driven by playwright-core): the page draws
// the vehicles the socket sends; two screenshots a few seconds apart show them moved; a
// geofence notice appears in the page's list; and after the map is zoomed to a quarter of
// one route, the page reports the smaller viewport and the socket sends fewer positions.
//
//   NODE_PATH=<node_modules with playwright-core> node realtimemap.cjs http://127.0.0.1:PORT <screenshot dir>
const { launch } = require("./launch.cjs");
const fs = require("fs");
const path = require("path");

const base = process.argv[2];
const shots = process.argv[3];
const patience = { timeout: 20000 };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    // what crosses the socket, as the browser sees it
    const wire = { positions: 0, viewports: [] };
    page.on("websocket", (socket) => {
      socket.on("framereceived", ({ payload }) => {
        if (JSON.parse(payload).type === 2) wire.positions++;
      });
      socket.on("framesent", ({ payload }) => {
        const message = JSON.parse(payload);
        if (message.type === 1) wire.viewports.push(message.payload);
      });
    });
    const requests = [];
    page.on("request", (request) => requests.push(request.url()));
    await page.goto(base);
    await page.waitForSelector("body[data-state=open]", patience);
    // the whole city is in view: every vehicle drawn
    await page.waitForFunction(() => Object.keys(window.realtimemap.state.vehicles).length === 12, null, patience);
    await page.waitForSelector("#notices li", patience);
    const notice = await page.textContent("#notices li");
    if (!/vehicle \d+ (entered|left) (Kamppi|Kallio)$/.test(notice)) throw new Error(`unexpected notice: ${notice}`);

    const vehicles = () => page.evaluate(() => ({ ...window.realtimemap.state.vehicles }));
    const before = await vehicles();
    const first = await page.screenshot({ path: path.join(shots, "realtimemap-1.png") });
    await sleep(3000);
    const after = await vehicles();
    const second = await page.screenshot({ path: path.join(shots, "realtimemap-2.png") });
    const common = Object.keys(before).filter((v) => v in after);
    const moved = common.filter((v) => before[v][0] !== after[v][0] || before[v][1] !== after[v][1]);
    if (common.length < 10 || moved.length !== common.length) {
      throw new Error(`${moved.length} of ${common.length} vehicles moved: ${JSON.stringify({ before, after })}`);
    }
    if (first.equals(second)) throw new Error("the two screenshots are the same");

    // every request went to the binary: no tiles, fonts or scripts from elsewhere
    const foreign = requests.filter((url) => !url.startsWith(base));
    if (foreign.length > 0) throw new Error(`requests left the binary: ${foreign}`);

    // what the wide view receives, then the map zoomed to a quarter of route 550's loop
    let start = wire.positions;
    await sleep(4000);
    const wide = wire.positions - start;
    const reported = await page.evaluate(() => window.realtimemap.state.viewports);
    await page.evaluate(() => window.realtimemap.map.fitBounds([[60.158, 24.868], [60.170, 24.900]]));
    await page.waitForFunction((n) => window.realtimemap.state.viewports > n, reported, patience);
    await sleep(500);
    start = wire.positions;
    await sleep(4000);
    const narrow = wire.positions - start;
    const area = (v) => (v.north - v.south) * (v.east - v.west);
    const [widest, last] = [wire.viewports[0], wire.viewports[wire.viewports.length - 1]];
    if (!(area(last) < area(widest) / 4)) throw new Error(`the viewport did not shrink: ${JSON.stringify(wire.viewports)}`);
    if (!(narrow * 2 < wide)) throw new Error(`the smaller viewport got ${narrow} positions in 4 s, the wide one ${wide}`);
    await page.screenshot({ path: path.join(shots, "realtimemap-zoomed.png") });
    console.log(`browser: 12 vehicles drawn and all moved in 3 s, notice "${notice}", ${wide} positions in 4 s for the whole map and ${narrow} for a quarter of one route; screenshots in ${shots}`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
