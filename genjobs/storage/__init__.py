"""Storage backends: a local folder (the embedded default) and Supabase Storage."""
