"""Tools around the trainer: the real shape with random weights (`smoke`), seconds per stage SDPO against
PGPO (`bench`), and the loss's time and memory against the plain one (`bench_loss`)."""
