"""The Img-Diff family: difference areas of image pairs, region captions, matching and similarity filters,
difference captions."""
