"""Running models: device and precision (`device`), and the one loop every command uses (`runner`)."""
