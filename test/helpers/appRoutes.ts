import type { Express } from 'express';

// The routes an Express 5 app registers, read from its router stack: "GET /api/orgs/:id/api-keys".
// Tests compare them with the lists that must cover every route (the OpenAPI contract), so a
// new route without an entry fails a test.

interface Layer {
  rawPath?: string;
  route?: { path: string; methods: Record<string, boolean> };
  handle?: { stack?: Layer[] };
}

export function registeredRoutes(app: Express): string[] {
  const routes: string[] = [];
  const walk = (stack: Layer[], prefix: string) => {
    for (const layer of stack) {
      if (layer.route) {
        const path = layer.route.path === '/' && prefix ? prefix : prefix + layer.route.path;
        routes.push(...Object.keys(layer.route.methods).map((method) => `${method.toUpperCase()} ${path}`));
      } else if (layer.handle?.stack) {
        walk(layer.handle.stack, prefix + (layer.rawPath === '/' ? '' : (layer.rawPath ?? '')));
      }
    }
  };
  walk((app as unknown as { router: { stack: Layer[] } }).router.stack, '');
  return routes;
}
