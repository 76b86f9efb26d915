// The chatroom in Debian's Chromium (driven by playwright-core): A and B in one room, C in
// another. A sends a line holding markup and a script: B shows it as text (nothing
// executed, no element made), C never sees it. A renames itself (announced), D joins the
// room late and is shown its history, and closing A makes B show that A left (the
// server's disconnect hook).
//
//   NODE_PATH=<node_modules with playwright-core> node chatroom.cjs http://127.0.0.1:PORT
const { launch } = require("./launch.cjs");

const base = process.argv[2];
const patience = { timeout: 15000 };

/// Waits until `page`'s log holds a line whose text is `text`.
function shows(page, text) {
  return page.waitForFunction(
    (text) => [...document.querySelectorAll("#log li")].some((li) => li.textContent === text),
    text,
    patience,
  );
}

async function open(browser, name, room) {
  const page = await browser.newPage();
  page.dialogs = 0;
  page.on("dialog", (dialog) => { page.dialogs++; dialog.dismiss(); });
  await page.goto(`${base}/?name=${name}&room=${room}`);
  await page.waitForSelector("body[data-state=open]", patience);
  return page;
}

async function main() {
  const browser = await launch();
  try {
    const a = await open(browser, "alice", "lobby");
    const b = await open(browser, "bob", "lobby");
    const c = await open(browser, "carol", "kitchen");
    // A sees B join: the connect hook's notice reached a session opened before it
    await shows(a, "bob joined");

    const payload = '<img src=x onerror="window.pwned=1;alert(1)"><script>window.pwned=1</script> hi & bye';
    await a.fill("#text", payload);
    await a.click("#send");
    const line = `alice: ${payload}`;
    await shows(b, line);
    for (const page of [a, b]) {
      const unsafe = await page.evaluate(() => window.pwned === 1 || document.querySelector("#log img, #log script") !== null);
      if (unsafe || page.dialogs > 0) throw new Error("the payload was rendered as HTML or executed");
    }

    await a.fill("#nick", "ally");
    await a.click("#rename");
    await shows(b, "alice is now ally");

    // a newcomer to the room is shown its last lines
    const d = await open(browser, "dave", "lobby");
    await shows(d, line);

    // the other room saw none of it
    await c.fill("#text", "anyone?");
    await c.click("#send");
    await shows(c, "carol: anyone?");
    const leaked = await c.evaluate(() => [...document.querySelectorAll("#log li")].some((li) => li.textContent.startsWith("alice")));
    if (leaked) throw new Error("a line crossed rooms");

    await a.close();
    await shows(b, "ally left");
    console.log("browser: rooms kept apart, markup shown as text, rename and history seen, and that A left");
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
