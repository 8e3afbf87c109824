"""The train level: a small encoder trained with the cell's attention on a task generated in process
(:mod:`attnbench.train.tasks`), its loop (:mod:`attnbench.train.loop`) and its row (:mod:`.cell`)."""
