"""HybridKD: ANN-guided distillation of spiking neural networks via hybrid block-wise replacement.

Modules and the library modules each imports (``tests/test_package.py`` checks this map)::

    cli        -> book, catalog, config, data, efficiency, methods, nirexport, plugins, results, trainer
    trainer    -> checkpoint, children, config, data, distributed, learner, results, spikecosts, step
    step       -> layers, speed
    learner    -> checkpoint, config, methods, models
    methods    -> hybrid, learner, losses, plugins, ratebp
    config     -> catalog, data, losses, methods, models, neurons, ratebp, results
    losses     -> methods
    hybrid     -> data, layers, models
    spikecosts -> hybrid, layers, neurons, ratebp
    nirexport  -> checkpoint, data, layers, models, neurons, results
    ratebp     -> layers, neurons
    layers     -> neurons
    efficiency -> children, config, data, floor, learner, lif_backend, methods, models, results, speed, step
    lif_backend -> children, neurons
    cam        -> checkpoint, config, data, learner, methods, results
    data       -> catalog
    catalog    -> results
    checkpoint -> results
    speed      -> memory, neurons
    neurons, distributed, children, floor, memory, plugins, results -> (none)
    models/    -> layers, neurons, plugins (the registry, students and teachers on one stage protocol)

``book/`` (plan, reproduce, cluster, dryrun, tinydata, evidence, claims, report) is the book's machinery: it imports the
library; no library module but ``cli`` (its ``reproduce`` command) imports it.
"""
__version__ = "0.1.0"
