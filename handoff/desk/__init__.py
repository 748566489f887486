"""The desk around the VM: Looking Glass's shared memory (and, later, USB, shares, sound).

Pure plans (:mod:`handoff.desk.looking_glass`) decide sizes, paths and refusals;
the edges (:mod:`handoff.desk.journal`, :mod:`handoff.desk.shm`) make the files
and put the host back.
"""
