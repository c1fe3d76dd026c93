"""Update transforms on the worker (clip, noise, mask) and their inverse in the fold."""
