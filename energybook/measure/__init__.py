"""The measure stage: taking energy measurements on an NVIDIA GPU.

* :mod:`~energybook.measure.protocol`: the frozen :class:`~energybook.measure.protocol.SweepConfig`
  (the API and the provenance record of a sweep) and the planning of a grid into groups;
* :mod:`~energybook.measure.meter`: NVML's energy counter and power timeline, for the GPU the engine
  runs on, in three parts: :mod:`~energybook.measure.nvml_device` (NVML by UUID),
  :mod:`~energybook.measure.samplers` and the pure :mod:`~energybook.measure.timeline`;
* :mod:`~energybook.measure.engines`: the engine interfaces and their one registry;
* :mod:`~energybook.measure.wave`: what both engines share (a wave, its times, prompts, dummy weights, the batch
  rule's call);
* :mod:`~energybook.measure.torch_engine` (with :mod:`~energybook.measure.hf_attention` and
  :mod:`~energybook.measure.hf_model`): the ``hf`` engine on transformers modules;
* :mod:`energybook.measure.lean`: the ``lean`` engine, a decoder of its own;
* :mod:`energybook.measure.external`: TensorRT-LLM and vLLM through their benchmark commands (plugins);
* :mod:`~energybook.measure.runner`: the resumable sweep that writes to :mod:`energybook.store`;
* :mod:`~energybook.measure.launch` (with :mod:`~energybook.measure.plan` and
  :mod:`~energybook.measure.ranks`): one rank per GPU under torchrun;
* :mod:`~energybook.measure.estimate`: a sweep's duration before it runs;
* :mod:`~energybook.measure.notebook`: the papermill measurement notebook.

This stage imports :mod:`energybook.model` and :mod:`energybook.store`, never :mod:`energybook.report`.
"""
