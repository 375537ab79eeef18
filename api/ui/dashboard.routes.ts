import path from 'node:path';
import express, { Router } from 'express';

// The dashboard: static files with no build step, served by the API process so `npm start`
// shows it. `/` is the page; `/ui/…` its scripts and styles. Files are revalidated (ETag) on
// every load, so a deploy is picked up without stale modules.
const PUBLIC_DIR = path.join(__dirname, 'public');

export function dashboardRouter() {
  const router = Router();
  router.get('/', (_req, res) => {
    res.setHeader('Cache-Control', 'no-cache');
    res.sendFile(path.join(PUBLIC_DIR, 'index.html'));
  });
  router.use('/ui', express.static(PUBLIC_DIR, { index: false, redirect: false, setHeaders: (res) => res.setHeader('Cache-Control', 'no-cache') }));
  return router;
}
