// The API key lives in this tab's sessionStorage only: gone when the tab closes, never in a URL,
// a cookie or the console.
const SLOT = 'keyusage.apiKey';

export const sessionKey = () => sessionStorage.getItem(SLOT);
export const keepSessionKey = (key) => sessionStorage.setItem(SLOT, key);
export const forgetSessionKey = () => sessionStorage.removeItem(SLOT);
