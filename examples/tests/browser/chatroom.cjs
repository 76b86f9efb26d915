// Two pages of the chatroom in Debian's Chromium (driven by playwright-core): A sends a
// line holding markup and a script, B shows it as text (nothing executed, no element
// made), and closing A makes B show that A left (the server's disconnect hook).
//
//   NODE_PATH=<node_modules with playwright-core> node chatroom.cjs http://127.0.0.1:PORT
const { chromium } = require("playwright-core");

const base = process.argv[2];
const patience = { timeout: 15000 };

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const a = await browser.newPage();
    const b = await browser.newPage();
    let dialogs = 0;
    for (const page of [a, b]) page.on("dialog", (dialog) => { dialogs++; dialog.dismiss(); });
    await a.goto(`${base}/?name=alice`);
    await b.goto(`${base}/?name=bob`);
    await a.waitForSelector("body[data-state=open]", patience);
    await b.waitForSelector("body[data-state=open]", patience);
    // A sees B join (the connect hook's broadcast reached a session opened before it)
    await a.waitForFunction(() => [...document.querySelectorAll("#log li")].some((li) => li.textContent === "bob joined"), null, patience);

    const payload = '<img src=x onerror="window.pwned=1;alert(1)"><script>window.pwned=1</script> hi & bye';
    await a.fill("#text", payload);
    await a.click("#send");
    const line = `alice: ${payload}`;
    await b.waitForFunction((line) => [...document.querySelectorAll("#log li")].some((li) => li.textContent === line), line, patience);
    const unsafe = await b.evaluate(() => window.pwned === 1 || document.querySelector("#log img, #log script") !== null);
    if (unsafe || dialogs > 0) throw new Error("the payload was rendered as HTML or executed");

    await a.close();
    await b.waitForFunction(() => [...document.querySelectorAll("#log li")].some((li) => li.textContent === "alice left"), null, patience);
    console.log("browser: B showed A's line as text, and that A left");
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
