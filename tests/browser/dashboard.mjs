// The node dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
// over CDP (no browser download), with axe-core's accessibility rules on every view.
//
//   node tests/browser/dashboard.mjs target/debug/confide [artifacts-dir]
//
// It starts a coordinator and two node daemons on loopback (guest approves by its policy,
// host leaves the job to its owner), submits a private job, logs in to host's dashboard with
// the owner's key, checks the ε on the inbox page against `confide dp epsilon`, approves with
// the keyboard alone, watches the job complete, checks the budget view's debit, runs
// "verify now", and saves a screenshot of each view. Then the refusals: no session, a forged
// CSRF token, another owner's session, and a revoked job's approve. Exit code 0 only if every
// check passed; each failure is printed.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const bin = resolve(process.argv[2] ?? join(root, 'target/debug/confide'));
const artifacts = resolve(process.argv[3] ?? join(here, 'artifacts'));
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const PASSPHRASE = 'correct horse battery staple';
const OWNER_ID = 'b547bdb0e95a80974d0ccd4b00544743';

const work = mkdtempSync(join(tmpdir(), 'confide-browser-'));
const fed = join(work, 'fed');
mkdirSync(artifacts, { recursive: true });
const daemons = [];
const failures = [];
const weights = [];

function confide(args, env = {}) {
  return execFileSync(bin, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
}

function check(ok, what) {
  if (ok) {
    console.log(`ok   ${what}`);
  } else {
    console.log(`FAIL ${what}`);
    failures.push(what);
  }
}

// Starts a daemon and resolves with the `lines` addresses it prints first; its stdout stays
// open (a daemon whose stdout closes stops).
function daemon(name, args, lines) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  daemons.push(child);
  const log = [];
  child.stderr.on('data', (d) => log.push(d.toString()));
  child.logText = () => log.join('');
  const rl = createInterface({ input: child.stdout });
  const addrs = [];
  return new Promise((ok, fail) => {
    rl.on('line', (line) => {
      if (addrs.length < lines) {
        addrs.push(line.trim().split(' ').pop());
        if (addrs.length === lines) ok({ child, addrs });
      }
    });
    child.on('exit', (code) => fail(new Error(`${name} exited ${code}: ${child.logText()}`)));
  });
}

function policy(dataset, approval) {
  const p = join(work, `${dataset}.toml`);
  writeFileSync(p, `[dataset]
name = "${dataset}"
expires = 2030-12-31T23:59:59Z
lifetime_epsilon = 10.0
lifetime_delta = 1e-5

[[rule]]
name = "dp study"
model_owners = ["${OWNER_ID}"]
modes = ["federated"]
schemes = ["plain"]
max_epsilon = 3.0
approval = "${approval}"
`);
  return p;
}

function manifest(id) {
  const example = readFileSync(join(root, 'examples/breast_homo.toml'), 'utf8')
    .replaceAll('"../data/', `"${root}/data/`)
    .replaceAll('"policies/', `"${root}/examples/policies/`)
    .replaceAll('"keys/', `"${root}/examples/keys/`)
    .replace('id = "breast-homo"', `id = "${id}"`)
    .replace('rounds = 80', 'rounds = 3')
    .replace('scheme = "paillier"', 'scheme = "plain"');
  const config = join(work, `${id}.toml`);
  writeFileSync(config, `${example}
[privacy]
level = "record"
target_epsilon = 2.0
delta = 1e-5
clip_norm = 1.0
accountant = "rdp"
`);
  const out = join(work, `${id}.json`);
  confide(['job', 'sign', '--config', config, '--key', join(fed, 'owner.key'), '--out', out]);
  return out;
}

function keygen(name) {
  const key = join(work, `${name}-approver.key`);
  const made = JSON.parse(confide(['keygen', '--out', key, '--no-tls-key', '--passphrase-env', 'DASH_PASS'], { DASH_PASS: PASSPHRASE }));
  return { key, id: made.id };
}

function login(admin, key) {
  return confide(['node', 'login', '--admin', admin, '--key', key, '--passphrase-env', 'DASH_PASS'], { DASH_PASS: PASSPHRASE }).trim();
}

// The job's state at the coordinator (`job status` exits non-zero for the ends other than
// completed, and still prints the record).
function jobState(control, job) {
  let out;
  try {
    out = confide(['job', 'status', job, '--coordinator', control, '--fed', fed, '--name', 'owner', '--format', 'json']);
  } catch (e) {
    out = e.stdout;
  }
  return JSON.parse(out).state.name;
}

async function waitFor(what, secs, f) {
  const end = Date.now() + secs * 1000;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

// axe-core on the current page: no serious or critical violation.
async function accessible(page, view) {
  // Injected over CDP, which the page's CSP (no script at all) does not govern.
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `${view}: axe-core finds no serious or critical violation ${JSON.stringify(bad)}`);
  if (result.length) console.log(`     (${view}: minor or moderate: ${JSON.stringify(result)})`);
}

// Does `act` (a click or a key press that submits a form to `path`), then waits for the
// page the server redirects to (often the same address, so the URL alone cannot tell).
async function submits(page, path, act) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === path && r.request().method() === 'POST'),
    page.waitForEvent('load'),
    act(),
  ]);
  return response;
}

// The keyboard alone reaches every link, button and field of the page, in order: Tab from
// the top visits each of them (the skip link first).
async function keyboard(page, view) {
  const targets = await page.evaluate(() => {
    const all = [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')];
    all.forEach((el, i) => el.setAttribute('data-kb', String(i)));
    return all.length;
  });
  await page.evaluate(() => document.activeElement?.blur());
  await page.evaluate(() => window.scrollTo(0, 0));
  const seen = new Set();
  for (let i = 0; i < targets + 5; i += 1) {
    await page.keyboard.press('Tab');
    const id = await page.evaluate(() => document.activeElement?.getAttribute('data-kb'));
    if (id !== null && id !== undefined) seen.add(id);
  }
  check(seen.size === targets, `${view}: Tab reaches all ${targets} links, buttons and fields (${seen.size})`);
}

async function view(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
  const bytes = Buffer.byteLength(await page.content());
  weights.push([name, bytes]);
  await accessible(page, name);
  await keyboard(page, name);
}

async function main() {
  // The federation: a CA, a coordinator, two node daemons, the examples' model owner.
  confide(['ca', 'init', '--dir', fed, '--federation', 'browser-test']);
  for (const [name, role] of [['coordinator', 'coordinator'], ['guest', 'node'], ['host', 'node']]) {
    confide(['ca', 'issue', '--dir', fed, '--name', name, '--role', role]);
  }
  writeFileSync(join(fed, 'owner.key'), readFileSync(join(root, 'examples/keys/model-owner.key')));
  confide(['ca', 'issue', '--dir', fed, '--name', 'owner', '--role', 'model-owner', '--public-key', join(root, 'examples/keys/model-owner.key.pub')]);
  const host = keygen('host');
  const guest = keygen('guest');
  // The operator's held-out test set for the job (the coordinator's dashboard draws its curves).
  const evaluation = join(work, 'evaluation');
  mkdirSync(join(evaluation, OWNER_ID), { recursive: true });
  writeFileSync(join(evaluation, OWNER_ID, 'dashboard-demo.csv'), readFileSync(join(root, 'data/breast_homo/breast_homo_test.csv')));
  const coordinator = await daemon('coordinator', ['coordinator', 'serve', '--fed', fed, '--control', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--fleet', '127.0.0.1:0', '--store', join(work, 'coordinator.redb'), '--evaluation', evaluation], 3);
  const [coordinatorAdmin, control, fleet] = coordinator.addrs;
  const node = (name, approval, key) => daemon(name, ['node', 'serve', '--fed', fed, '--name', name, '--coordinator', fleet,
    '--data', join(root, `data/breast_homo/breast_homo_${name}.csv`), '--policy', policy(`${name}_data`, approval),
    '--ledger', join(work, `${name}-ledger.redb`), '--approver-key', key, '--admin', '127.0.0.1:0', '--poll', '0.3',
    '--store', join(work, `${name}-node.redb`)], 1);
  const hostAdmin = (await node('host', 'co-signature', host.key)).addrs[0];
  const guestAdmin = (await node('guest', 'automatic', guest.key)).addrs[0];

  confide(['job', 'submit', manifest('dashboard-demo'), '--coordinator', control, '--fed', fed, '--name', 'owner']);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    const page = await ctx.newPage();
    const base = `http://${hostAdmin}`;

    // Inbox: the offered job waits for the owner.
    await page.goto(login(hostAdmin, host.key));
    await waitFor('the job in the inbox', 30, async () => {
      await page.goto(`${base}/ui/inbox`);
      return (await page.locator('text=dashboard-demo').count()) > 0;
    });
    check(page.url() === `${base}/ui/inbox`, 'the login address opens the inbox');
    await view(page, 'inbox');

    // The job's page: the ε it costs, checked against `confide dp epsilon`.
    await page.click('text=dashboard-demo');
    const shown = (await page.locator('#privacy dt:has-text("ε (this dataset") + dd').innerText()).trim();
    const command = (await page.locator('#epsilon-check').innerText()).trim().split(/\s+/);
    check(command[0] === 'confide' && command[1] === 'dp' && command[2] === 'epsilon', 'the page prints the accountant command');
    const recomputed = JSON.parse(confide(command.slice(1))).epsilon;
    check(recomputed.toFixed(4) === shown, `the rendered ε ${shown} is what \`confide dp epsilon\` gives (${recomputed})`);
    const after = (await page.locator('#budget dt:has-text("after this job") + dd').innerText()).trim();
    check(Math.abs(Number(after) - (10 - recomputed)) < 1e-3, `the budget left after the job is shown (${after})`);
    await view(page, 'inbox-job');

    // Approve with the keyboard alone: Tab to the passphrase, type it, Enter.
    const approveUrl = page.url();
    let focused = '';
    for (let i = 0; i < 80 && focused !== 'approve-passphrase'; i += 1) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => document.activeElement?.id ?? '');
    }
    check(focused === 'approve-passphrase', 'the passphrase field is reachable with Tab');
    await page.keyboard.type(PASSPHRASE);
    await submits(page, `${new URL(approveUrl).pathname}/approve`, () => page.keyboard.press('Enter'));
    const status = (await page.locator('#job-status').innerText()).trim();
    check(['approved', 'running', 'ended'].includes(status), `Enter approves the job (${status})`);

    // Jobs: the job runs to its end; the rounds this node sent are listed.
    await waitFor('the job to complete', 120, async () => jobState(control, 'dashboard-demo') === 'completed');
    await waitFor('the jobs view to show the end', 30, async () => {
      await page.goto(`${base}/ui/jobs`);
      return (await page.locator('#jobs >> text=3/3').count()) > 0 && (await page.locator('#jobs >> text=ended').count()) > 0;
    });
    check(true, 'the jobs view shows the job ended, 3 of 3 rounds sent');
    await view(page, 'jobs');

    // Budget: the debit of this job, in the ledger and the chart.
    await page.goto(`${base}/ui/budget`);
    const ledgerRow = page.locator('table.ledger tr:has-text("dashboard-demo")');
    check((await ledgerRow.count()) === 1, 'the budget view lists the job\'s debit');
    const debited = (await ledgerRow.locator('td').nth(1).innerText()).trim();
    check(debited === shown, `the debit is the ε the inbox showed (${debited})`);
    check((await page.locator('svg.chart').count()) === 1, 'the burn-down chart is drawn');
    await view(page, 'budget');

    // Audit: verify now.
    await page.goto(`${base}/ui/audit`);
    await submits(page, '/ui/audit/verify', () => page.click('#verify'));
    const verdict = await page.locator('#verification').innerText();
    check(verdict.includes('Verified') && verdict.includes('consistent'), 'verify now checks the log and its consistency with the cosigned head');
    await view(page, 'audit');

    await page.goto(`${base}/ui/health`);
    check((await page.locator('#health').innerText()).includes('answers'), 'health shows the coordinator answering');
    await view(page, 'health');

    // The coordinator's dashboard, as the model owner: the job, its held-out curves, the
    // download; as the operator: the nodes.
    const owner = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    const ownerPage = await owner.newPage();
    const coord = `http://${coordinatorAdmin}`;
    await ownerPage.goto(confide(['job', 'login', '--admin', coordinatorAdmin, '--fed', fed, '--name', 'owner']).trim());
    check(ownerPage.url() === `${coord}/ui/jobs`, 'the model owner\'s login opens its jobs');
    check((await ownerPage.locator('#jobs >> text=dashboard-demo').count()) === 1, 'the model owner sees its job');
    await view(ownerPage, 'coordinator-jobs');
    await ownerPage.click('text=dashboard-demo');
    check((await ownerPage.locator('svg.chart').count()) === 1, 'the job\'s held-out curves are drawn');
    check((await ownerPage.locator('#rounds tbody tr').count()) === 3, 'the rounds table has the 3 rounds');
    check((await ownerPage.locator('#download-model').count()) === 1, 'the recipient may download the model');
    await view(ownerPage, 'coordinator-job');
    const operator = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    const operatorPage = await operator.newPage();
    await operatorPage.goto(confide(['job', 'login', '--admin', coordinatorAdmin, '--fed', fed, '--name', 'coordinator']).trim());
    await operatorPage.goto(`${coord}/ui/nodes`);
    check((await operatorPage.locator('#nodes >> text=host').count()) === 1, 'the operator sees the nodes');
    await view(operatorPage, 'coordinator-nodes');
    await operatorPage.goto(`${coord}/ui/audit`);
    check((await operatorPage.locator('#head').count()) === 1, 'the operator sees the audit head');
    await view(operatorPage, 'coordinator-audit');
    const anonCoord = await (await browser.newContext()).newPage();
    await anonCoord.goto(`${coord}/ui/jobs`);
    check(anonCoord.url() === `${coord}/ui/login`, 'without a session the coordinator\'s jobs redirect to its login page');
    await view(anonCoord, 'coordinator-login');

    // Refusals. No session: a fresh browser goes to the login page.
    const anon = await browser.newContext();
    const anonPage = await anon.newPage();
    await anonPage.goto(`${base}/ui/inbox`);
    check(anonPage.url() === `${base}/ui/login`, 'without a session the inbox redirects to the login page');
    await view(anonPage, 'login');

    // A second job, for the refusals of actions.
    confide(['job', 'submit', manifest('dashboard-revoked'), '--coordinator', control, '--fed', fed, '--name', 'owner']);
    await waitFor('the second job in the inbox', 30, async () => {
      await page.goto(`${base}/ui/inbox`);
      return (await page.locator('text=dashboard-revoked').count()) > 0;
    });
    await page.click('text=dashboard-revoked');
    const jobUrl = page.url();
    const hash = jobUrl.split('/').pop();

    // A forged CSRF token: the server refuses, the job stays pending.
    await page.evaluate(() => { document.querySelector('form.decide input[name=csrf]').value = '0'.repeat(64); });
    await page.fill('#approve-passphrase', PASSPHRASE);
    const forged = await submits(page, `/ui/inbox/${hash}/approve`, () => page.click('#approve'));
    check(forged.status() === 403, `a forged CSRF token is refused (${forged.status()})`);
    await page.goto(jobUrl);
    check((await page.locator('#job-status').innerText()).trim() === 'pending', 'the job is still pending');
    const csrf = await page.locator('form.decide input[name=csrf]').first().inputValue();

    // Another owner's session (guest's, in its own browser): host's server refuses it.
    const other = await browser.newContext();
    const otherPage = await other.newPage();
    await otherPage.goto(login(guestAdmin, guest.key));
    check(otherPage.url().endsWith('/ui/inbox'), 'guest\'s owner has its own dashboard');
    const cross = await other.request.post(`${base}/ui/inbox/${hash}/approve`, { form: { csrf, passphrase: PASSPHRASE }, maxRedirects: 0 });
    check(cross.status() === 401, `an approve with another owner's session is refused (${cross.status()})`);

    // Revoked: the approve button is gone, and the server refuses the action.
    await page.goto(`${base}/ui/jobs/${hash}`);
    await page.fill('#revoke-reason', 'not this study');
    await page.fill('#revoke-passphrase', PASSPHRASE);
    await submits(page, `/ui/jobs/${hash}/revoke`, () => page.click('#revoke'));
    check((await page.locator('#revoked').count()) === 1, 'the job page shows the revocation');
    await page.goto(jobUrl);
    check((await page.locator('#approve').count()) === 0, 'a revoked job has no approve button');
    const late = await ctx.request.post(`${base}/ui/inbox/${hash}/approve`, { form: { csrf, passphrase: PASSPHRASE }, maxRedirects: 0 });
    check(late.status() === 409, `approving a revoked job is refused on the server (${late.status()})`);
    await waitFor('the revoked job to end rejected', 30, async () => jobState(control, 'dashboard-revoked') === 'rejected');
    check(true, 'the coordinator ends the revoked job rejected');
  } finally {
    await browser.close();
  }
  for (const [name, bytes] of weights) {
    console.log(`page weight ${name}: ${(bytes / 1024).toFixed(1)} kB (+ the shared stylesheet)`);
  }
}

let code = 0;
try {
  await main();
} catch (e) {
  console.log(`FAIL ${e.stack ?? e}`);
  failures.push(String(e));
}
for (const d of daemons) d.kill('SIGTERM');
if (failures.length) {
  console.log(`${failures.length} check(s) failed`);
  for (const d of daemons) console.log(d.logText?.().slice(-3000));
  code = 1;
} else {
  console.log(`all checks passed; screenshots in ${artifacts}`);
}
rmSync(work, { recursive: true, force: true });
process.exit(code);
