import { el } from './dom.js';

// A modal <dialog> (focus trapped, Esc cancels, no window.confirm) that resolves true when the
// person presses the confirming button. With `warning`, it is said under the message; with
// `acknowledge` (a checkbox's label), the confirming button stays disabled until it is ticked:
// for a change the API would refuse without the person's explicit word.
export function confirmDialog({ title, message, confirmLabel, warning, acknowledge }) {
  return new Promise((resolve) => {
    const confirm = el('button', { type: 'submit', value: 'yes', class: 'danger', text: confirmLabel, disabled: acknowledge !== undefined });
    const checkbox = acknowledge === undefined ? undefined : el('input', { type: 'checkbox', id: 'confirm-acknowledge' });
    checkbox?.addEventListener('change', () => (confirm.disabled = !checkbox.checked));
    // Enter in a form submits it by its first button, Cancel: ticked with Space, then Enter, the
    // dialog closed as cancelled with nothing said. Enter on the box does nothing; Tab reaches the button.
    checkbox?.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') event.preventDefault();
    });
    // Described by its message (and the warning): the focus opens on Cancel, so without it a
    // screen reader read the title and the button, never which key or what follows.
    const dialog = el(
      'dialog',
      {
        class: 'dialog',
        'aria-labelledby': 'confirm-title',
        'aria-describedby': warning === undefined ? 'confirm-message' : 'confirm-message confirm-warning',
      },
      [
        el('form', { method: 'dialog' }, [
          el('h2', { id: 'confirm-title', text: title }),
          el('p', { id: 'confirm-message', text: message }),
          warning === undefined ? null : el('p', { id: 'confirm-warning', class: 'error', text: warning }),
          checkbox === undefined ? null : el('label', { class: 'acknowledge' }, [checkbox, ` ${acknowledge}`]),
          el('div', { class: 'buttons' }, [el('button', { type: 'submit', value: 'no', text: 'Cancel', autofocus: true }), confirm]),
        ]),
      ],
    );
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(dialog.returnValue === 'yes');
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
