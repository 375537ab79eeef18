import { el } from './dom.js';

// A modal <dialog> (focus trapped, Esc cancels, no window.confirm) that resolves true when the
// person presses the confirming button.
export function confirmDialog({ title, message, confirmLabel }) {
  return new Promise((resolve) => {
    const confirm = el('button', { type: 'submit', value: 'yes', class: 'danger', text: confirmLabel });
    // Described by its message: the focus opens on Cancel, so without it a screen reader read the
    // title and the button, never which key or what follows.
    const dialog = el('dialog', { class: 'dialog', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-message' }, [
      el('form', { method: 'dialog' }, [
        el('h2', { id: 'confirm-title', text: title }),
        el('p', { id: 'confirm-message', text: message }),
        el('div', { class: 'buttons' }, [el('button', { type: 'submit', value: 'no', text: 'Cancel' }), confirm]),
      ]),
    ]);
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(dialog.returnValue === 'yes');
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
