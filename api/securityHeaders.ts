import type { RequestHandler } from 'express';

// One policy for the dashboard and the JSON API: scripts, styles and fetches from this origin
// only (no inline script or style, so an injected key name cannot run), never framed.
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export const securityHeaders: RequestHandler = (_req, res, next) => {
  res.setHeader('Content-Security-Policy', CONTENT_SECURITY_POLICY);
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  // The dashboard's URLs carry key ids (never secrets); no need to hand them to other sites.
  res.setHeader('Referrer-Policy', 'no-referrer');
  next();
};

/**
 * Every /api answer is one caller's: a shared cache (Varnish, a CDN) keeps a response to a request
 * it takes for anonymous, and a request that authenticates with X-API-Key looks anonymous to it
 * (only Authorization marks a request as private). Its page of key names, IPs and usage would then
 * go to anyone asking for the same URL, and a created or rotated key's plaintext with it.
 */
export const privateApiResponses: RequestHandler = (_req, res, next) => {
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Vary', 'Authorization, X-API-Key');
  next();
};
