"""Stand-in for Slicer's ``SampleData`` module: the registration call the extension makes, and the button's call.

Only what the tests touch: ``SampleDataLogic.registerCustomSampleDataSource(**kwargs)`` stores a source (its
arguments as attributes) under its category in ``SampleDataLogic.sources``, once per sample name; ``press``
does what the Sample Data module's button does with a custom downloader: ``source.customDownloader(source)``.
"""

from __future__ import annotations

import types


class SampleDataLogic:
    sources: dict[str, list] = {}

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileType="VolumeFile",
                                       loadFiles=None, loadFileProperties=None, checksums=None):
        source = types.SimpleNamespace(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                       customDownloader=customDownloader, thumbnailFileName=thumbnailFileName,
                                       loadFileType=loadFileType, checksums=checksums)
        known = SampleDataLogic.sources.setdefault(category, [])
        if all(s.sampleName != sampleName for s in known):
            known.append(source)


def press(source):
    """What the Sample Data module's button of a source with a custom downloader does."""
    return source.customDownloader(source)
