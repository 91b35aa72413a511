// Delete button of an item, shown only to its author: the first click asks for
// confirmation in place, the second deletes. A 404 means it is gone already, which
// is what the person wanted.
import { useState } from 'react';
import { ApiError, describeError } from './api';
import { useAuth } from './auth';
import { deleteItem } from './board';

export function DeleteItem({ id, title, onDeleted }: { id: number; title: string; onDeleted: () => void }) {
  const auth = useAuth();
  const [step, setStep] = useState<'idle' | 'confirm' | 'pending'>('idle');
  const [error, setError] = useState('');

  const confirm = async () => {
    setStep('pending');
    setError('');
    try {
      await deleteItem(id);
      onDeleted();
      return;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        onDeleted();
        return;
      }
      if (err instanceof ApiError && err.status === 401) auth.lost();
      setError(`Not deleted: ${describeError(err)}`);
      setStep('idle');
    }
  };

  return (
    <div className="delete" data-testid="delete" data-step={step}>
      {step === 'idle' ? (
        <button
          type="button"
          className="danger small"
          data-testid="item-delete"
          onClick={() => setStep('confirm')}
          aria-label={`Delete “${title}”`}
        >
          Delete
        </button>
      ) : (
        <span className="confirm" role="group" aria-label={`Delete “${title}”?`}>
          <span>Delete this item?</span>
          <button
            type="button"
            className="danger small"
            data-testid="delete-confirm"
            onClick={() => void confirm()}
            disabled={step === 'pending'}
          >
            {step === 'pending' ? 'Deleting…' : 'Yes, delete'}
          </button>
          <button
            type="button"
            className="secondary small"
            data-testid="delete-cancel"
            onClick={() => setStep('idle')}
            disabled={step === 'pending'}
          >
            Cancel
          </button>
        </span>
      )}
      {error ? (
        <span className="inline-error" role="alert" data-testid="delete-error">
          {error}
        </span>
      ) : null}
    </div>
  );
}
