from pathlib import Path

from setuptools import find_packages, setup

COMMANDS = {
    "cmbunet_synthetic": "cmbunet.synthetic.cli:main",
    "cmbunet_convert_valdo": "cmbunet.dataset.convert_valdo:main",
    "cmbunet_plan_and_preprocess": "cmbunet.plan_and_preprocess:main",
    "cmbunet_train": "cmbunet.training.cli:main",
    "cmbunet_predict": "cmbunet.inference.cli:main",
    "cmbunet_evaluate": "cmbunet.evaluation.cli:main",
    "cmbunet_evaluate_cv": "cmbunet.evaluation.cross_validation:main",
    "cmbunet_find_thresholds": "cmbunet.evaluation.thresholds:main",
    "cmbunet_export_model": "cmbunet.model_sharing:export_main",
    "cmbunet_install_model": "cmbunet.model_sharing:install_main",
    "cmbunet_report": "cmbunet.report.cli:main",
    "cmbunet_demo": "cmbunet.demo:main",
}

setup(
    name="cmbunet",
    version="0.1.0",
    description="Self-configuring detection and segmentation of cerebral microbleeds in brain MRI",
    long_description=(Path(__file__).resolve().parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    keywords=["cerebral microbleeds", "MRI", "detection", "segmentation", "deep learning", "VALDO", "nnU-Net"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Healthcare Industry",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
    packages=find_packages(include=["cmbunet", "cmbunet.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "numpy>=1.24",
        "scikit-image>=0.21",
        "acvl-utils>=0.2",
        "pandas>=2.0",
        "scipy>=1.10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "nilearn>=0.10",  # ships the MNI152 template used for real anatomy in synthetic data
    ],
    # browser: the report's headless-browser test (also needs Chromium and ChromeDriver from the system)
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2"], "browser": ["selenium>=4.11"]},
    entry_points={"console_scripts": [f"{name}={target}" for name, target in COMMANDS.items()]},
)
