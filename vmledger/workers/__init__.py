"""Workers: the host agent (and its power-state sync) and the timer. They act through
the command service and read the read models; nothing below imports them."""
