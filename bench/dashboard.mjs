// The dashboard under load, in Debian's Chromium: first-load bytes, time
// to the first live value, main-thread long tasks while /logs receives
// 2,000 lines/s, and the JS heap over the run. Run by bench/dashboard.sh.
import { chromium } from '../tests/browser/node_modules/playwright-core/index.mjs';
import { appendFileSync } from 'node:fs';

const url = process.env.O1_URL;
const host = process.env.O1_HOST;
const seconds = Number(process.env.DURATION || 600);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-dev-shm-usage'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const cdp = await page.context().newCDPSession(page);
await cdp.send('Network.enable');
let transferred = 0;
cdp.on('Network.loadingFinished', (e) => { transferred += e.encodedDataLength; });

const start = Date.now();
await page.goto(url + '/');
await page.locator(`tr[data-host="${host}"] td.cpu`).filter({ hasText: '%' }).waitFor({ timeout: 20000 });
console.log(`first_live_value_ms=${Date.now() - start}`);
await page.waitForTimeout(1000);
console.log(`first_load_bytes=${transferred} (fleet page, uncompressed, WebSocket excluded)`);

await page.goto(url + '/logs');
await page.locator('#connection', { hasText: /^connected$/ }).waitFor();
await page.evaluate(() => {
  window.__long = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push(e.duration); })
    .observe({ type: 'longtask', buffered: true });
});
// 2,000 lines/s: 100 lines every 50 ms, as hosts write them.
let n = 0;
const levels = ['INFO', 'INFO', 'INFO', 'DEBUG', 'WARN', 'ERROR'];
const writer = setInterval(() => {
  let text = '';
  for (let i = 0; i < 100; i++, n++) {
    const level = levels[n % levels.length];
    text += n % 10 === 0
      ? `{"ts":"${new Date().toISOString()}","level":"${level.toLowerCase()}","msg":"request served","path":"/api/items/${n}","status":200,"ms":${n % 97}}\n`
      : `${new Date().toISOString()} ${level} worker[${n % 8}] handled job ${n} in ${n % 250} ms\n`;
  }
  appendFileSync(process.env.O1_LOG, text);
}, 50);
const heap = async () => (await cdp.send('Runtime.getHeapUsage')).usedSize;
const samples = [];
for (let t = 0; t < seconds; t += 30) {
  await page.waitForTimeout(30000);
  const long = await page.evaluate(() => window.__long.splice(0));
  const rows = await page.locator('#log-lines .line').count();
  samples.push({ t: t + 30, heap: await heap(), long });
  const max = long.length ? Math.max(...long).toFixed(0) : 0;
  console.log(`t=${t + 30}s written=${n} rows_in_dom=${rows} heap_mb=${(samples.at(-1).heap / 1048576).toFixed(1)} long_tasks=${long.length} longest_ms=${max}`);
}
clearInterval(writer);
await browser.close();
