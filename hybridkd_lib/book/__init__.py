"""The book's machinery, apart from the method: the plan of runs (``plan``), running it through papermill
with caching (``reproduce``) or as Slurm/local jobs (``cluster``), the CPU dry run on tiny data in the real
formats (``dryrun``, ``tinydata``), the committed records of a measured profile (``evidence``) and the claims
tested on them (``claims``), and the tables and figures the pages draw (``report``, beside the paper's values in
``reported.json``), and the tutorials' drawing and measuring helpers (``lab``). The library's modules (``hybridkd_lib.*`` outside this package) never import it, the
command line (``cli``) alone excepted,
so a run's cache key covers them and not this package (``reproduce.code_files``).
"""
