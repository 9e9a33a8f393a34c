"""Other tools' formats and argument names (Data-Juicer's sample format and Img-Diff arguments)."""
