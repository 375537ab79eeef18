import { el } from './dom.js';
import { dormantSection } from './dormantCleanup.js';
import { eventsSection } from './eventsFeed.js';
import { orgUsageSection } from './orgUsage.js';
import { webhooksSection } from './webhooksList.js';

// The organization: its uses over time, events feed, dormant keys and their clean-up, webhooks. Each part stands
// alone, so one endpoint missing or failing leaves the others working.
export function createOrgView({ who, onFresh }) {
  const sections = [orgUsageSection(who), eventsSection(who), dormantSection(who, who.scopes.includes('keys:write'), onFresh), webhooksSection(who)];
  const element = el('div', { class: 'org' }, [el('h2', { text: `Organization ${who.orgId}` }), ...sections.map((section) => section.element)]);
  return { element, refresh: () => Promise.all(sections.map((section) => section.refresh())) };
}
