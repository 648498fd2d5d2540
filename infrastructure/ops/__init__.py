"""Operations: migrations, replays, the quarantine's list and retry, and the embedded
servers `vigil up` runs."""
