"""The measure stage: taking energy measurements on an NVIDIA GPU.

* :mod:`~energybook.measure.protocol`: the frozen :class:`~energybook.measure.protocol.SweepConfig`
  (the API and the provenance record of a sweep) and the planning of a grid into groups;
* :mod:`~energybook.measure.meter`: NVML's energy counter and power timeline, for the GPU the engine
  runs on;
* :mod:`~energybook.measure.engines`: the two engine interfaces and their one registry;
* :mod:`~energybook.measure.torch_engine`: energybook's own PyTorch engine;
* :mod:`~energybook.measure.external`: TensorRT-LLM and vLLM through their benchmark commands;
* :mod:`~energybook.measure.runner`: the resumable sweep that writes to :mod:`energybook.store`;
* :mod:`~energybook.measure.notebook`: the papermill measurement notebook.

This stage imports :mod:`energybook.model` and :mod:`energybook.store`, never :mod:`energybook.report`.
"""
