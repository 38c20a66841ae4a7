import { Router, type Response } from 'express';
import type { GatewayContext } from '../context.js';
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS } from './assets.js';
import { snapshotter } from './snapshot.js';

/** The page loads only its own script, style and data: nothing from another origin. */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

function sendAsset(res: Response, type: string, body: string): void {
  res.setHeader('content-type', type);
  res.setHeader('cache-control', 'no-cache');
  res.setHeader('x-content-type-options', 'nosniff');
  res.end(body);
}

/**
 * The live status page: `GET /dashboard` (HTML, with its script and style
 * under `/dashboard/`) and `GET /dashboard/data` (JSON readings the page
 * polls every second).
 */
export function dashboardRoutes(ctx: GatewayContext): Router {
  const router = Router();
  const snapshot = snapshotter(ctx);

  router.get('/dashboard', (_req, res) => {
    res.setHeader('content-security-policy', CSP);
    res.setHeader('referrer-policy', 'no-referrer');
    sendAsset(res, 'text/html; charset=utf-8', DASHBOARD_HTML);
  });
  router.get('/dashboard/app.js', (_req, res) => sendAsset(res, 'text/javascript; charset=utf-8', DASHBOARD_JS));
  router.get('/dashboard/app.css', (_req, res) => sendAsset(res, 'text/css; charset=utf-8', DASHBOARD_CSS));

  /** Readings at one moment; answers even while Redis is down (queues and workers are null then). */
  router.get('/dashboard/data', async (_req, res) => {
    const body = await snapshot();
    res.setHeader('cache-control', 'no-store');
    res.json(body);
  });

  return router;
}
