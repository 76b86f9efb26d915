// Debian's Chromium as the browser tests launch it: headless, no sandbox (CI runs as
// root), nothing fetched from the network behind the test's back.
const { chromium } = require("playwright-core");

exports.launch = () => chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
