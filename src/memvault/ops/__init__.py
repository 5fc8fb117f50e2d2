"""Operations on a whole vault: backup, restore, verify, export, legacy import, forget."""
