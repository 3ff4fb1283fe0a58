// Drives Debian's Chromium (headless) through the dashboard of a real
// relay with a real agent. Started by tests/tests/e2e/dashboard.rs, which
// owns the processes; it prints `KILL` when the relay should be killed and
// restarted and waits for a line on stdin. Exits non-zero on the first
// failed expectation, with what it saw.
//
// Env: O1_URL (http://127.0.0.1:PORT), O1_HOST (the agent's host), O1_LOG
// (the tailed file), O1_AGENT_BIN and O1_AGENT_CONFIG (for `o1-agent
// deploy`), O1_SHOTS (screenshot directory), CHROMIUM (executable).
import { chromium } from 'playwright-core';
import { appendFileSync, mkdirSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

const url = process.env.O1_URL;
const host = process.env.O1_HOST;
const shots = process.env.O1_SHOTS;
mkdirSync(shots, { recursive: true });
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once('line', resolve));

function fail(message) {
  console.error('FAIL ' + message);
  process.exit(1);
}
function expect(condition, message) {
  if (!condition) fail(message);
}
const step = (name) => console.log('STEP ' + name);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const problems = [];
page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
page.on('pageerror', (e) => problems.push('page error: ' + e.message));

// ---- Fleet: the host is listed, with a CPU figure that changes.
step('fleet');
const started = Date.now();
await page.goto(url + '/');
const row = page.locator(`tr[data-host="${host}"]`);
await row.waitFor({ timeout: 15000 });
await page.locator(`tr[data-host="${host}"] td.cpu`).filter({ hasText: '%' }).waitFor({ timeout: 15000 });
const firstValueMs = Date.now() - started;
const cpuFigures = new Set();
for (let i = 0; i < 12 && cpuFigures.size < 2; i++) {
  cpuFigures.add(await page.locator(`tr[data-host="${host}"] td.cpu`).textContent());
  await page.waitForTimeout(500);
}
expect(cpuFigures.size >= 2, 'the CPU figure did not change: ' + [...cpuFigures]);
expect((await page.textContent('#connection')).includes('connected'), 'not connected');
await page.screenshot({ path: shots + '/fleet.png' });
console.log('METRIC first_live_value_ms ' + firstValueMs);

// ---- Host: charts of the host and the application.
step('host');
await page.goto(url + '/hosts/' + encodeURIComponent(host));
await page.locator('section.card[data-app="system"] canvas').first().waitFor({ timeout: 10000 });
await page.locator('section.card[data-app="app"]').waitFor({ timeout: 10000 });
await page.locator('section.card[data-app="system"] .net canvas').first().waitFor({ timeout: 10000 });
await page.waitForTimeout(1500);
await page.screenshot({ path: shots + '/host.png' });

// ---- Logs: an appended line shows within a second; the level filter.
step('logs');
await page.goto(url + '/logs?host=' + encodeURIComponent(host));
// (Locators, not waitForFunction: the page's CSP forbids eval, as it should.)
const connected = () => page.locator('#connection', { hasText: /^connected$/ });
await connected().waitFor();
await page.waitForTimeout(300);
const marker = 'dashboard marker ' + Date.now();
const appended = Date.now();
appendFileSync(process.env.O1_LOG, `2026-11-28T10:00:00Z INFO ${marker}\n`);
await page.locator('#log-lines .line', { hasText: marker }).waitFor({ timeout: 5000 });
const lineMs = Date.now() - appended;
console.log('METRIC file_to_page_ms ' + lineMs);
expect(lineMs < 1000, `the line took ${lineMs} ms to appear`);
appendFileSync(process.env.O1_LOG, '2026-11-28T10:00:01Z ERROR disk almost full\n2026-11-28T10:00:02Z WARN slow request\n');
await page.locator('#log-lines .line.lvl-ERROR', { hasText: 'disk almost full' }).waitFor({ timeout: 5000 });
await page.screenshot({ path: shots + '/logs.png' });
await page.selectOption('select[name="level"]', 'WARNING');
await page.waitForURL(/level=WARNING/);
await page.locator('#log-lines .line.lvl-ERROR', { hasText: 'disk almost full' }).waitFor({ timeout: 5000 });
appendFileSync(process.env.O1_LOG, '2026-11-28T10:00:03Z INFO hidden by the filter\n2026-11-28T10:00:04Z ERROR after the filter\n');
await page.locator('#log-lines .line', { hasText: 'after the filter' }).waitFor({ timeout: 5000 });
const infoLines = await page.locator('#log-lines .line.lvl-INFO').count();
expect(infoLines === 0, `${infoLines} INFO lines shown with level WARNING`);

// ---- A relay crash: "reconnecting", then back by itself, no duplicates.
step('reconnect');
await page.selectOption('select[name="level"]', '');
await page.waitForURL((u) => !u.search.includes('level='));
await page.locator('#log-lines .line', { hasText: 'after the filter' }).waitFor({ timeout: 5000 });
console.log('KILL');
await page.locator('#connection', { hasText: /^reconnecting/ }).waitFor({ timeout: 10000 });
await page.screenshot({ path: shots + '/reconnecting.png' });
await nextLine();
appendFileSync(process.env.O1_LOG, '2026-11-28T10:00:05Z INFO after the restart\n');
await connected().waitFor({ timeout: 30000 });
await page.locator('#log-lines .line', { hasText: 'after the restart' }).waitFor({ timeout: 15000 });
const texts = await page.locator('#log-lines .line').allTextContents();
const messages = texts.map((t) => t.replace(/^\S+ (AM |PM )?/, ''));
const duplicates = messages.filter((m, i) => messages.indexOf(m) !== i);
expect(duplicates.length === 0, 'duplicate lines after the reconnect: ' + duplicates.join(' | '));
expect(texts.filter((t) => t.includes(marker)).length === 1, 'the marker line is not shown exactly once');

// ---- Deployments: `o1-agent deploy`, followed live to its end.
step('deployment');
const id = 'dash-' + Date.now();
const deploy = spawn(process.env.O1_AGENT_BIN, [
  '--config', process.env.O1_AGENT_CONFIG, 'deploy', '--id', id, '--app', 'app', '--',
  'sh', '-c', 'echo fetching; sleep 1.5; echo "::progress 30 building"; echo compiling; sleep 1.5; echo "::progress 70 testing"; sleep 1.5; echo tests passed',
], { stdio: 'ignore' });
const deployed = new Promise((resolve) => deploy.on('exit', resolve));
await page.goto(url + '/deployments');
await page.locator('#deployments a', { hasText: id }).waitFor({ timeout: 15000 });
await page.screenshot({ path: shots + '/deployments.png' });
await page.locator('#deployments a', { hasText: id }).click();
await page.waitForURL('**/deployments/' + id);
const progress = new Set();
const deadline = Date.now() + 20000;
while (Date.now() < deadline) {
  progress.add(Number(await page.locator('[role=progressbar]').getAttribute('aria-valuenow')));
  if (await page.locator('#final').textContent()) break;
  await page.waitForTimeout(200);
}
const final = await page.locator('#final').textContent();
expect(final.includes('completed'), 'no final status: ' + final);
const seenProgress = [...progress].filter((p) => !Number.isNaN(p)).sort((a, b) => a - b);
expect(seenProgress.length >= 2 && seenProgress.at(-1) === 100, 'progress did not rise: ' + seenProgress);
const deploymentLines = await page.locator('#deployment-lines .line').allTextContents();
expect(deploymentLines.some((t) => t.includes('compiling')), 'deployment lines missing: ' + deploymentLines);
await page.waitForTimeout(400); // the bar's transition
await page.screenshot({ path: shots + '/deployment.png' });
await deployed;

// ---- Narrow window, keyboard, dark mode.
step('narrow');
const narrow = await browser.newContext({ viewport: { width: 390, height: 800 }, colorScheme: 'dark' });
const phone = await narrow.newPage();
phone.on('pageerror', (e) => problems.push('page error: ' + e.message));
await phone.goto(url + '/');
await phone.locator(`tr[data-host="${host}"] td.cpu`).filter({ hasText: '%' }).waitFor({ timeout: 15000 });
const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
expect(overflow <= 1, `the page is ${overflow}px wider than a phone`);
await phone.keyboard.press('Tab');
await phone.keyboard.press('Tab');
const focused = await phone.evaluate(() => document.activeElement && document.activeElement.tagName);
expect(['A', 'INPUT', 'BUTTON', 'SELECT', 'TH'].includes(focused), 'Tab does not reach a control: ' + focused);
await phone.screenshot({ path: shots + '/fleet-narrow-dark.png' });

// ---- A relay with `browsers = "token"`: the page asks once, then works.
if (process.env.O1_TOKEN_URL) {
  step('token');
  const guarded = await browser.newContext();
  const tab = await guarded.newPage();
  tab.on('pageerror', (e) => problems.push('page error: ' + e.message));
  await tab.goto(process.env.O1_TOKEN_URL + '/');
  await tab.locator('form.token input[name=token]').waitFor({ timeout: 10000 });
  await tab.fill('form.token input[name=token]', 'not-a-token');
  await tab.press('form.token input[name=token]', 'Enter');
  await tab.locator('form.token').waitFor({ timeout: 10000 });
  await tab.fill('form.token input[name=token]', process.env.O1_READER_TOKEN);
  await tab.press('form.token input[name=token]', 'Enter');
  await tab.locator('#connection', { hasText: /^connected$/ }).waitFor({ timeout: 10000 });
  await tab.locator('h1', { hasText: 'Fleet' }).waitFor({ timeout: 10000 });
  // Kept for the session: another page opens without asking.
  await tab.goto(process.env.O1_TOKEN_URL + '/logs');
  await tab.locator('#connection', { hasText: /^connected$/ }).waitFor({ timeout: 10000 });
  expect(await tab.locator('form.token').count() === 0, 'asked for the token again');
}

// Errors the token phase provoked on purpose (a 401 for the wrong token)
// are the page's expected answers, not failures.
const real = problems.filter((p) => !p.includes('401'));
expect(real.length === 0, 'browser errors: ' + real.join(' | '));
console.log('OK');
await browser.close();
process.exit(0);
