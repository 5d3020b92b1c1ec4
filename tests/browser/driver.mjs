// Loads UI workflows into the real ComfyUI frontend in headless Chromium, the way a user does
// (a file dropped on the page -> the frontend's own drop handler -> app.handleFile), and records
// what the frontend made of each: missing node types, nodes, links, dialogs and toasts, its own
// re-serialisation (app.graph.serialize()), its API conversion (app.graphToPrompt()) and a
// screenshot. Driven by tests/browser/test_workflows_browser.py:
//
//   node tests/browser/driver.mjs CONFIG.json
//   CONFIG = {url, nodeModules, chromium, userDataDir, outDir, viewport: {width, height},
//             workflows: [{name, file}]}
// Writes OUTDIR/results.json and OUTDIR/<name>.png. Exit code 0 unless the browser itself failed.

import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const require = createRequire(path.join(config.nodeModules, 'noop.js'))
const { chromium } = require('playwright-core')

const log = (...a) => console.error('[driver]', ...a)

async function settle(page, ms) {
  // Two animation frames (the frontend fits the view in one) and a pause for async dialogs.
  // (rAF can stall when the machine is starved: never wait more than 2 s for it.)
  await page.evaluate(() => Promise.race([
    new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))),
    new Promise((r) => setTimeout(r, 2000))
  ]))
  await page.waitForTimeout(ms)
}

async function main() {
  // First visit of a fresh server: no "new user" template dialog, no Nodes 2.0 banner; for
  // legible screenshots: full detail at any zoom, no minimap, no canvas statistics.
  const settings = [['Comfy.TutorialCompleted', true], ['LiteGraph.Canvas.MinFontSizeForLOD', 0],
    ['Comfy.Minimap.Visible', false], ['Comfy.Graph.CanvasInfo', false], ...(config.settings ?? [])]
  for (const [id, value] of settings) {
    const res = await fetch(`${config.url}/api/settings/${id}`, { method: 'POST', body: JSON.stringify(value) })
    if (!res.ok) log(`POST /api/settings/${id} -> ${res.status}`)
  }
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: config.viewport,
    deviceScaleFactor: 1
  })
  await context.addInitScript(() => localStorage.setItem('vueNodesBannerDismissed', 'true'))
  const page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(60000)
  const consoleErrors = []
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text())
  })
  page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`))

  const t0 = Date.now()
  await page.goto(config.url, { waitUntil: 'domcontentloaded' })
  await page.waitForFunction(
    () => window.app?.graph && window.app.canvas && window.LiteGraph &&
      Object.keys(window.LiteGraph.registered_node_types).length > 50,
    null, { timeout: 120000 })
  await settle(page, 500)
  const env = await page.evaluate(() => ({
    frontendVersion: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    registeredTypes: Object.keys(LiteGraph.registered_node_types).length
  }))
  env.loadSeconds = (Date.now() - t0) / 1000
  // The version the frontend reports about itself (also in every serialised workflow).
  env.frontendVersion ??= await page.evaluate(async () => (await app.graphToPrompt()).workflow.extra?.frontendVersion ?? null)
  log(`frontend ${env.frontendVersion} up in ${env.loadSeconds}s, ${env.registeredTypes} node types`)

  const results = []
  for (const wf of config.workflows) {
    const text = fs.readFileSync(wf.file, 'utf8')
    const data = JSON.parse(text)
    const t1 = Date.now()
    const phases = {}
    const mark = (name) => { phases[name] = (Date.now() - t1) / 1000 }
    // Close whatever an earlier load left open, then drop the file on the page.
    await page.keyboard.press('Escape')
    await page.evaluate(({ text, name }) => {
      window.__ipakLoaded = false
      const dt = new DataTransfer()
      dt.items.add(new File([text], `${name}.json`, { type: 'application/json' }))
      const target = document.querySelector('#graph-canvas') ?? document.body
      target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }))
    }, { text, name: wf.name })
    let loaded = true
    try {
      await page.waitForFunction(
        ({ ids }) => {
          const have = new Set(window.app.graph.nodes.map((n) => n.id))
          return ids.every((id) => have.has(id)) && have.size === ids.length
        },
        { ids: data.nodes.map((n) => n.id) }, { timeout: 30000 })
    } catch {
      loaded = false
    }
    mark('loaded')
    await settle(page, 1200)
    const dialogs = await page.evaluate(() =>
      Array.from(document.querySelectorAll('.p-dialog')).map((d) => ({
        title: d.querySelector('.p-dialog-title, .p-dialog-header')?.textContent?.trim() ?? '',
        text: d.textContent.trim().replace(/\s+/g, ' ').slice(0, 4000)
      })))
    const toasts = await page.evaluate(() =>
      Array.from(document.querySelectorAll('.p-toast-message')).map((t) => t.textContent.trim().replace(/\s+/g, ' ')))
    // Dismiss dialogs and toasts so the screenshot shows the graph.
    for (let i = 0; i < 4; i++) {
      const open = await page.locator('.p-dialog').count()
      if (!open) break
      const close = page.locator('.p-dialog .p-dialog-close-button, .p-dialog button[aria-label="Close"]').first()
      if (await close.count()) await close.click({ timeout: 2000 }).catch(() => page.keyboard.press('Escape'))
      else await page.keyboard.press('Escape')
      await page.waitForTimeout(300)
    }
    await page.evaluate(() => document.querySelectorAll('.p-toast-message').forEach((t) => t.remove()))
    mark('dialogs')
    const state = await page.evaluate(async () => {
      const g = window.app.graph
      const registered = window.LiteGraph.registered_node_types
      const serialized = JSON.parse(JSON.stringify(g.serialize()))
      const prompt = (await window.app.graphToPrompt()).output
      const links = []
      for (const l of g.links.values ? g.links.values() : Object.values(g.links)) {
        if (l) links.push([l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type])
      }
      return {
        missingTypes: [...new Set(g.nodes.map((n) => n.type))].filter((t) => !(t in registered)),
        nodes: g.nodes.map((n) => ({
          id: n.id, type: n.type, comfyClass: n.comfyClass ?? null, title: n.title,
          pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
          widgets: (n.widgets ?? []).map((w) => w.name),
          hasErrors: Boolean(n.has_errors)
        })),
        links, serialized, prompt,
        workflowTitle: window.app.extensionManager?.workflow?.activeWorkflow?.filename ?? null
      }
    })
    mark('state')
    await settle(page, 300)
    // Where the graph (nodes with their title bars, groups) is on the screen, in CSS pixels.
    const graphRect = await page.evaluate(() => {
      const { ds } = window.app.canvas
      const el = window.app.canvas.canvas.getBoundingClientRect()
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30
      const boxes = window.app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title])
      for (const g of window.app.graph.groups ?? []) boxes.push(Array.from(g._bounding ?? g.bounding))
      const x0 = Math.min(...boxes.map((b) => b[0]))
      const y0 = Math.min(...boxes.map((b) => b[1]))
      const x1 = Math.max(...boxes.map((b) => b[0] + b[2]))
      const y1 = Math.max(...boxes.map((b) => b[1] + b[3]))
      const sx = (x) => el.left + (x + ds.offset[0]) * ds.scale
      const sy = (y) => el.top + (y + ds.offset[1]) * ds.scale
      return { x: sx(x0), y: sy(y0), width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale, scale: ds.scale }
    })
    const shot = path.join(config.outDir, `${wf.name}.png`)
    await page.screenshot({ path: shot, timeout: 120000 })
    mark('screenshot')
    results.push({ name: wf.name, loaded, seconds: (Date.now() - t1) / 1000, phases, dialogs, toasts, screenshot: shot,
      graphRect, ...state })
    log(`${wf.name}: ${JSON.stringify(phases)} s, ${state.nodes.length} nodes, ${state.links.length} links, ` +
      `${state.missingTypes.length} missing types, ${dialogs.length} dialogs, ${toasts.length} toasts`)
  }
  fs.writeFileSync(path.join(config.outDir, 'results.json'),
    JSON.stringify({ env, results, consoleErrors: consoleErrors.slice(0, 200) }, null, 1))
  await context.close()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
