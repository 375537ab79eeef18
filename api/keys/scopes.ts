export const SCOPES = ['keys:read', 'keys:write'] as const;
export type Scope = (typeof SCOPES)[number];
